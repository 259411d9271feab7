"""Live P2V end to end (issue 9): phys-bios, booted normally on its
physical-bios hardware, installs ferry from `ferry serve`'s bundle and runs
`ferry capture --live` against it while a service writes; serve converts
the capture, and the VM boots on virtio with the service's state at the
freeze. One boot of each proves:

- the bundle installs on a running server (its wheels unpacked under
  /opt/ferry, no pip), step by step on the console, and ferry runs from it
  without python3-libvirt;
- a partitioned source: the disk (MBR: root ext4 on sda1, swap on sda2) is
  captured whole, mapped per partition (ext4 by partclone, swap by its
  header), its mounted root found and frozen;
- the converted VM's counter is the one acknowledged last before the freeze
  began, at most the first acknowledged after the thaw (the write the
  freeze held); its negative control is the source's own boot marker,
  printed before the writer's first write: the counter is no constant of
  the disk;
- the writer limit: while copying, the writer's cgroup has io.max and the
  acknowledged rate is within it; before the capture and after it (the
  negative controls) the same writer runs well above it;
- rounds and the freeze time are reported.

Each phase's time (boot, install, capture, conversion, converted boot) is
printed.

This is also where phys-bios's conversion is proved (one capture and one
conversion instead of two), and `ferry serve --check-boot`: the server's
boot check of its conversion reports "boots" in the session status
(`GET /v1/sessions/NAME`) and its log. The converted VM boots on virtio as
itself
(hostname, its physical NIC name pinned to the MAC, its address, its data);
its negative control boots the same disk with another MAC, so no pin
applies and the NIC takes the virtual slot's name; the domain files lie
next to the disk. That an unconverted capture does not boot on virtio is
test_convert_safety.py's negative control."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from converters import __version__, accel
from converters.wire import autoconvert
from converters.wire.bundle import BUNDLE_DIR
from converters.wire.connection import WireClient
from converters.wire.pairing import Pairing
from converters.wire.throttle import parse_rate
from tests.e2e.convert_helpers import (
    BOOT_TIMEOUT,
    assert_same_machine,
    boot,
    log_tail,
)
from tests.e2e.live_p2v_guest import (
    SESSION,
    WRITER_LIMIT,
    Timeline,
    instrument,
    write_rate,
)
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import DEFAULT_MAC, QemuMachine, overlay
from tests.integration.test_wire_support import Serve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]

# Under TCG the guest's TLS, zstd and partclone run emulated.
INSTALL_TIMEOUT = 600
CAPTURE_TIMEOUT = 1800
CONVERT_TIMEOUT = 1800
LIMIT = parse_rate(WRITER_LIMIT)  # bytes/s
AFTER_ACKS = 8  # acknowledgements wanted after ferry ended
OTHER_MAC = "52:54:00:fe:01:99"


@dataclass
class LiveRun:
    machine: object
    session: Path
    console: str  # the source's serial console
    own: object  # the source's boot marker, before the writer's first write
    phases: Phases
    folder: Path  # serve.log, the source's console
    served_status: dict  # GET /v1/sessions/SESSION once converted

    def keep_logs(self, workdir: Path) -> None:
        """Into the test's workdir, which keeps them if the test fails."""
        for log in self.folder.rglob("*.log"):
            shutil.copy(log, workdir / f"source-{log.name}")


@pytest.fixture(scope="module")
def live(machine_builder, tmp_path_factory):
    """phys-bios captured live into `ferry serve`, which converts it."""
    from image import bundle

    workdir = tmp_path_factory.mktemp("live-p2v")
    phases = Phases()
    machine = machine_builder("phys-bios")
    server = Serve(
        workdir / "storage", workdir / "serve.log", convert=True, check_boot=True
    )
    bundle.build(workdir / "storage" / BUNDLE_DIR, echo=None)
    pairing = server.start()
    try:
        # QEMU's user network shows the host's loopback as 10.0.2.2.
        seen = Pairing("10.0.2.2", pairing.port, pairing.fingerprint, pairing.secret)
        source = overlay(machine.disk, workdir / "source.qcow2")
        instrument(source, seen)
        phases.done("machine, bundle and instrumented overlay")
        src = QemuMachine(PROFILES["physical-bios"], workdir / "source", [source])
        with src:
            own = src.wait_marker(600)
            phases.done("source boot to marker")
            installed = src.wait_for(
                r"LIVE-P2V installed|FERRY-LIVE-DONE", INSTALL_TIMEOUT
            )
            phases.done("bundle install")
            assert installed and installed[0] != "FERRY-LIVE-DONE", src.console()[
                -5000:
            ]
            done = src.wait_for(r"FERRY-LIVE-DONE rc=(\w+)", CAPTURE_TIMEOUT)
            assert done and done[1] == "0", src.console()[-5000:]
            phases.done("baseline and live capture")
            # the writer, unlimited again
            last = Timeline.parse(src.console()).acks[-1].value
            src.wait_for(rf"WRITER ack={last + AFTER_ACKS} ", 120)
            console = src.console()
        shutil.copy(src.console_log, workdir / "console-source.log")
        session = workdir / "storage" / SESSION
        status = autoconvert.wait(session, CONVERT_TIMEOUT)
        phases.done("conversion and boot check")
        assert status and status.state == "converted", (status, log_tail(session))
        client = WireClient(pairing)
        try:
            served = client.session(SESSION)
        finally:
            client.close()
    finally:
        server.stop()
        server.end_orphans()
    yield LiveRun(machine, session, console, own, phases, workdir, served)
    for disk in session.glob("*.qcow2"):
        disk.unlink()


def test_live_p2v_boots_with_the_writes_acknowledged_before_the_freeze(live, workdir):
    live.keep_logs(workdir)
    machine, session, console, own, phases = (
        live.machine,
        live.session,
        live.console,
        live.own,
        live.phases,
    )
    profile = PROFILES["virtual"]
    with boot(session, profile, workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    phases.done("converted boot to marker")
    phases.show()

    t = Timeline.parse(console)
    freeze = t.index("== freeze: /")
    thawed = t.index("frozen ")  # "frozen 0.123 s; ..." once thawed
    report = t.lines[t.index(f"live capture {SESSION} complete:")]
    print(report)
    for line in t.lines:
        if line.startswith(("ferry bundle: ", "sda mapped: ", "frozen")):
            print(line)
    # The partitioned disk: mapped per partition, only sda's mounted root
    # is frozen (swap is no filesystem), and the disk goes as one.
    assert "live capture of sda; filesystems to freeze at the end: /" in console
    mapped = t.lines[t.index("sda mapped: ")]
    assert "partition 1 ext4 by partclone.ext4" in mapped or (
        "partition 1 ext4" in mapped and "mapped frozen in" in console
    ), mapped
    assert "partition 2 swap by swap header" in mapped, mapped
    assert t.lines[freeze] == "== freeze: /"
    assert "rounds," in report and " frozen " in report
    assert f"ferry bundle: ferry {__version__} ready: /opt/ferry/bin/ferry" in console

    # The converted VM: the same machine, with the state at the freeze.
    low = max(a.value for a in t.acks if a.line < freeze)
    high = min(a.value for a in t.acks if a.line > thawed)
    # the same machine: hostname, firmware, ens8 pinned to its MAC, address
    assert_same_machine(marker, machine, vm, profile, session)
    print(
        f"counter {marker['counter']}: acknowledged {low} before the freeze, "
        f"{high} first after the thaw; converted VM marker {marker.seconds:.0f} s"
    )
    assert low <= int(marker["counter"]) <= high
    # the boot check changed only its throwaway overlay, not the VM's disk
    assert "FERRY-BOOT-CHECK" not in vm.console()
    # the source at its own boot, minutes earlier: an older state
    assert own and own["counter"] in ("none", *map(str, range(low)))
    assert marker["root"] == "/dev/vda1"

    # The writer limit: set while copying, within it; above it before and after.
    before = t.between(t.index("LIVE-P2V installed"), t.index("LIVE-P2V capture"))
    # Under the limit the writer's whole cycle (64 KiB, the counter, its
    # fsync and rename) took 50-60 s here, so a quick copy sees as few as
    # one limited acknowledgement: the rate is taken from the last ack
    # before the limit to the first after its lift, a span that holds the
    # limited window and only a second or two more.
    limited, lifted = t.index("writer limited to "), t.index("writer limit lifted")
    span = [
        max((a for a in t.acks if a.line < limited), key=lambda a: a.line),
        *t.between(limited, lifted),
        min((a for a in t.acks if a.line > lifted), key=lambda a: a.line),
    ]
    after = t.between(t.index("FERRY-LIVE-DONE"), len(t.lines))
    rates = [write_rate(p) for p in (before, span, after)]
    print(
        f"writer acks before, during, after the copy: {len(before)} "
        f"{len(span) - 2} {len(after)}; B/s: " + " ".join(f"{r:.0f}" for r in rates)
    )
    assert all(a.wbps == "none" for a in before + after)
    assert all(a.wbps == str(int(LIMIT)) for a in span[1:-1])
    assert rates[1] <= LIMIT * 1.5
    assert rates[0] > 3 * LIMIT and rates[2] > 3 * LIMIT
    # lifted before the freeze: no limited write between freeze and thaw
    assert all(a.wbps == "none" for a in t.between(freeze, thawed))


def test_serve_boot_checks_its_conversion_and_reports_boots(live):
    check = live.served_status["conversion"]["boot_check"]
    print(f"ferry serve's boot check: {check['summary']}")
    assert (check["result"], check["stage"]) == ("boots", "userspace"), check
    assert check["accelerator"] == accel.detect().name
    assert 0 < check["seconds"] < check["timeout"], check
    log = (live.folder / "serve.log").read_text()
    assert f"CONVERT boot-check session={SESSION} result=boots stage=userspace" in log
    console = (live.session / "boot-check.log").read_text(errors="replace")
    assert "FERRY-BOOT-CHECK userspace" in console
    assert not list(live.session.glob(".boot-check-*"))


def test_without_a_pin_for_its_mac_the_nic_is_renamed(live, workdir):
    profile = PROFILES["virtual"]
    with boot(live.session, profile, workdir, mac=OTHER_MAC) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    assert marker["host"] == live.machine.hostname
    assert marker["nic"] == profile.nic_name == "ens3"
    assert marker["addr"] == "none"  # its configuration names ens8
    print(f"unpinned MAC on virtual: marker after {marker.seconds:.0f} s")


def test_domain_files_written_next_to_the_disks(live):
    # named after the machine, whatever the session is called
    session, name = live.session, live.machine.hostname
    xml = (session / f"{name}.xml").read_text()
    assert f'<mac address="{DEFAULT_MAC}"/>' in xml
    assert f'<source file="{session / "sda.qcow2"}"/>' in xml
    assert "<loader" not in xml  # SeaBIOS, libvirt's default
    assert (session / f"{name}.qemu.sh").stat().st_mode & 0o111
    log = (session / "convert.log").read_text()
    assert f"ens8 pinned to {DEFAULT_MAC}" in log


class Phases:
    """Wall time of each phase, printed into the test's log."""

    def __init__(self):
        self.last = time.monotonic()
        self.times: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self.last))
        print(f"phase {name}: {now - self.last:.0f} s", flush=True)
        self.last = now

    def show(self) -> None:
        total = sum(t for _, t in self.times)
        print("phases: " + ", ".join(f"{n} {t:.0f} s" for n, t in self.times))
        print(f"phases total: {total:.0f} s")
