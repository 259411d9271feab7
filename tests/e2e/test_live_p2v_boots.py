"""Live P2V end to end (issue 9): phys-bios, booted normally on its
physical-bios hardware, installs ferry from `ferry serve`'s bundle and runs
`ferry capture --live` against it while a service writes; serve converts
the capture, and the VM boots on virtio with the service's state at the
freeze. One boot of each proves:

- the bundle installs on a running server (python3 -m venv, pip
  --no-index) and ferry runs from it;
- a partitioned source: the disk (MBR: root ext4 on sda1, swap on sda2) is
  captured whole, its mounted root found and frozen;
- the converted VM's counter is the one acknowledged last before the freeze
  began, at most the first acknowledged after the thaw (the write the
  freeze held); its negative control is the source's own boot marker,
  printed before the writer's first write: the counter is no constant of
  the disk;
- the writer limit: while copying, the writer's cgroup has io.max and the
  acknowledged rate is within it; before the capture and after it (the
  negative controls) the same writer runs well above it;
- rounds and the freeze time are reported.

The converted VM's hostname, pinned NIC and data are checked as in
test_convert_boots.py; that an unconverted capture does not boot on virtio
is test_convert_safety.py's negative control."""

from __future__ import annotations

import shutil
import time

import pytest

from converters.wire import autoconvert
from converters.wire.bundle import BUNDLE_DIR
from converters.wire.pairing import Pairing
from converters.wire.throttle import parse_rate
from tests.e2e.convert_helpers import BOOT_TIMEOUT, boot, log_tail
from tests.e2e.live_p2v_guest import (
    SESSION,
    WRITER_LIMIT,
    Timeline,
    instrument,
    write_rate,
)
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import QemuMachine, overlay
from tests.integration.test_wire_support import Serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    # Never seen to the end: at load ~20 the guest's bundle install alone
    # ran over 29 min of TCG (docs/live-capture.md, "End to end in QEMU").
    # Unskip once it has passed on a quieter machine.
    pytest.mark.skip(reason="live P2V e2e not yet seen passing (docs/live-capture.md)"),
]

# Under TCG the guest's pip, TLS and zstd run emulated; about a GiB in use.
CAPTURE_TIMEOUT = 1800
CONVERT_TIMEOUT = 1800
LIMIT = parse_rate(WRITER_LIMIT)  # bytes/s
AFTER_ACKS = 8  # acknowledgements wanted after ferry ended


def test_live_p2v_boots_with_the_writes_acknowledged_before_the_freeze(
    machine_builder, workdir
):
    from image import bundle

    machine = machine_builder("phys-bios")
    server = Serve(workdir / "storage", workdir / "serve.log", convert=True)
    bundle.build(workdir / "storage" / BUNDLE_DIR, echo=None)
    pairing = server.start()
    try:
        # QEMU's user network shows the host's loopback as 10.0.2.2.
        seen = Pairing("10.0.2.2", pairing.port, pairing.fingerprint, pairing.secret)
        source = overlay(machine.disk, workdir / "source.qcow2")
        instrument(source, seen)
        started = time.monotonic()
        src = QemuMachine(PROFILES["physical-bios"], workdir / "source", [source])
        with src:
            own = src.wait_marker(600)
            done = src.wait_for(r"FERRY-LIVE-DONE rc=(\w+)", CAPTURE_TIMEOUT)
            assert done and done[1] == "0", src.console()[-5000:]
            captured = time.monotonic() - started
            # the writer, unlimited again
            last = Timeline.parse(src.console()).acks[-1].value
            src.wait_for(rf"WRITER ack={last + AFTER_ACKS} ", 120)
            console = src.console()
        shutil.copy(src.console_log, workdir / "console-source.log")
        session = workdir / "storage" / SESSION
        status = autoconvert.wait(session, CONVERT_TIMEOUT)
        assert status and status.state == "converted", (status, log_tail(session))
    finally:
        server.stop()
        server.end_orphans()

    profile = PROFILES["virtual"]
    with boot(session, profile, workdir / "converted") as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)

    t = Timeline.parse(console)
    freeze = t.index("== freeze: /")
    thawed = t.index("frozen ")  # "frozen 0.123 s; ..." once thawed
    report = t.lines[t.index(f"live capture {SESSION} complete:")]
    print(report)
    print(f"live capture from boot to done: {captured:.0f} s")
    # The partitioned disk: only sda's mounted root is frozen (swap is no
    # filesystem), and the disk goes as one.
    assert t.lines[freeze] == "== freeze: /"
    assert "live capture of sda;" in console
    assert "rounds," in report and " frozen " in report

    # The converted VM: the same machine, with the state at the freeze.
    low = max(a.value for a in t.acks if a.line < freeze)
    high = min(a.value for a in t.acks if a.line > thawed)
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    print(
        f"counter {marker['counter']}: acknowledged {low} before the freeze, "
        f"{high} first after the thaw; converted VM marker {marker.seconds:.0f} s"
    )
    assert low <= int(marker["counter"]) <= high
    # the source at its own boot, minutes earlier: an older state
    assert own and own["counter"] in ("none", *map(str, range(low)))
    assert marker["host"] == machine.hostname
    assert marker["root"] == "/dev/vda1"
    assert marker["nic"] == machine.recipe.nic != profile.nic_name
    assert marker["addr"].startswith("10.0.2."), marker.fields
    assert marker["data"] == "ok"

    # The writer limit: set while copying, within it; above it before and after.
    before = t.between(t.index("LIVE-P2V installed"), t.index("LIVE-P2V capture"))
    during = [a for a in t.acks if a.wbps == str(int(LIMIT))]
    after = t.between(t.index("FERRY-LIVE-DONE"), len(t.lines))
    rates = [write_rate(p) for p in (before, during, after)]
    print(
        "writer B/s before, during, after the copy: {:.0f} {:.0f} {:.0f}".format(*rates)
    )
    assert all(a.wbps == "none" for a in before + after)
    assert rates[1] <= LIMIT * 1.5
    assert rates[0] > 3 * LIMIT and rates[2] > 3 * LIMIT
    # lifted before the freeze: no limited write between freeze and thaw
    assert all(a.wbps == "none" for a in t.between(freeze, thawed))
