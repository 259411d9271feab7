"""`ferry migrate --libvirt`: a libvirt domain moved between two real libvirtd
daemons on this machine (tests/harness/libvirt_daemons.py), steered round by
round by the seed's policy through libvirt's job statistics and controls
(issue 8).

One hostile guest (CPU-bound writer at 128 MB/s, four times the 32 MiB/s
link, and self-checking blocks on its disk) is booted once on the source and
makes three trips, each with its disk copied (no shared storage): a
migration cancelled midway (it stays on the source), a live migration under
the seed policy (it moves), and an offline migration back run by the
`ferry migrate` command itself."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import threading
import time
from dataclasses import dataclass

import libvirt
import pytest

from converters.events import EventStream
from converters.migrate_command import register
from converters.migrate_libvirt import LibvirtMigration
from converters.migrate_qmp import MigrationOptions
from converters.migrate_report import MigrationReport, MigrationRound
from tests.harness.libvirt_daemons import STREAM_DIR, Daemon, DaemonPair, why_not
from tests.harness.libvirt_guest import (
    NAME,
    Console,
    domain_xml,
    make_disks,
    write_wrapper,
)
from tests.harness.migration_guest import Progress, have_tools
from tests.harness.migration_link import Link
from tests.harness.migration_run import DISK_MB, LINK, WORKLOADS, MiB

MISSING = why_not() or have_tools()
pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.slow,
]
# Each daemon's QEMU sees these paths in its own directory; the relays join
# the source's to the destination's.
STREAM = f"{STREAM_DIR}/stream.sock"
NBD = f"{STREAM_DIR}/nbd.sock"
# The disk is written once at boot, then only re-read and checked: disk writes
# (blocking ones, once the seed's write-blocking mirror runs) would slow the
# single-threaded writer until it is no longer hostile (seen here: it
# converged in one round).
WRITER = dataclasses.replace(WORKLOADS["hostile"], disk_mb=2, disk_mbps=0, verify=5)


@dataclass
class Trip:
    report: MigrationReport | None  # None when the command ran it
    table: str  # the summary table
    before: list[Progress]  # the writer's lines where it ran before
    after: list[Progress]  # where it runs after (new lines only)
    disk_checks: list[tuple[int, int, int, str]]  # there, after
    source_state: int | None  # libvirt's state of the domain on each side
    dest_state: int | None
    crashed: bool


def state(daemon: Daemon) -> int | None:
    conn = libvirt.open(daemon.uri)
    try:
        return conn.lookupByName(NAME).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def cancel_when_sent(src: Daemon, engine: LibvirtMigration, mib: int) -> None:
    """Cancel once the source has sent `mib` MiB of memory: midway, however
    long a loaded host takes to set the migration up."""
    conn = libvirt.open(src.uri)
    try:
        dom = conn.lookupByName(NAME)
        for _ in range(600):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.jobStats().get("memory_processed", 0) >= mib << 20:
                    break
            time.sleep(0.1)
        engine.cancel()
    finally:
        conn.close()


def ferry(*argv: str) -> tuple[int, str]:
    """`ferry migrate ...` as converters.cli runs it; its status and stdout."""
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["migrate", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = args.func(args)
    return status, out.getvalue()


def trip(src: Daemon, dst: Daemon, cancel_mib=None, command=False, **kw) -> Trip:
    src_console, dst_console = Console(src), Console(dst)
    dst_console.skip_past()
    before = src_console.progress()
    report = None
    with (
        Link(src.host_path(STREAM), dst.host_path(STREAM), LINK),
        Link(src.host_path(NBD), dst.host_path(NBD), LINK),
    ):
        if command:
            status, table = ferry(
                NAME,
                "--libvirt",
                src.uri,
                "--to",
                dst.uri,
                "--storage",
                "copy",
                "--uri",
                f"unix:{STREAM}",
                "--nbd",
                f"unix:{NBD}",
                "--bandwidth",
                "32M",
                *kw["args"],
            )
            assert status == 0, table
        else:
            options = MigrationOptions(
                uri=f"unix:{STREAM}", nbd=f"unix:{NBD}", storage="copy", **kw
            )
            options = dataclasses.replace(options, bandwidth=LINK)
            events = EventStream()
            events.subscribe(
                lambda e: isinstance(e, MigrationRound) and print(e.line())
            )
            engine = LibvirtMigration(src.uri, NAME, dst.uri, options, events)
            if cancel_mib is not None:
                threading.Thread(
                    target=cancel_when_sent, args=(src, engine, cancel_mib), daemon=True
                ).start()
            report = engine.run()
            table = report.table()
    print(table)
    # Wait for lines, not seconds: a loaded host can starve the guest.
    moved = "status        completed" in table
    where = dst_console if moved else src_console
    lines = where.wait_progress(2, 60)
    after = lines if moved else lines[len(before) :]
    deadline = time.monotonic() + 30
    while not where.disk_checks() and time.monotonic() < deadline:
        time.sleep(0.2)
    return Trip(
        report,
        table,
        before,
        after,
        where.disk_checks(),
        state(src),
        state(dst),
        where.crashed(),
    )


def assert_disk_intact(t: Trip) -> None:
    """The writer re-read every block it wrote where it runs now, and each
    held the generation it last wrote, with a valid checksum."""
    assert t.disk_checks, "no disk check on the console"
    for _, blocks, bad, result in t.disk_checks:
        assert (bad, result) == (0, "ok"), t.disk_checks
        assert blocks == WRITER.disk_mb * MiB // 4096


@pytest.fixture(scope="module")
def trips():
    with DaemonPair() as pair:
        wrapper = write_wrapper(pair.dir / "qemu")
        make_disks(DISK_MB, pair.a, pair.b)
        conn = libvirt.open(pair.a.uri)
        conn.createXML(domain_xml(WRITER, wrapper, disk=True), 0)
        conn.close()
        if len(Console(pair.a).wait_progress(2, 90)) < 2:
            pytest.fail(f"the guest did not start:\n{Console(pair.a).text()[-2000:]}")
        cancelled = trip(pair.a, pair.b, cancel_mib=32)
        live = trip(pair.a, pair.b, policy="seed", timeout=300)
        back = trip(
            pair.b, pair.a, command=True, args=["--offline", "--timeout", "120"]
        )
        yield cancelled, live, back


def test_cancelled_libvirt_migration_leaves_the_guest_running_on_the_source(trips):
    t = trips[0]
    r = t.report
    assert r.status == "cancelled" and r.ended_by == "cancel", r.table()
    assert r.source_running and r.ram_bytes > 0, r.table()  # cancelled midway
    assert t.source_state == libvirt.VIR_DOMAIN_RUNNING
    assert t.dest_state is None  # libvirt removed the destination's QEMU
    # The writer carries on on the source, its counter unbroken.
    assert len(t.after) >= 2 and t.after[-1].pages > t.before[-1].pages
    assert not t.crashed
    assert_disk_intact(t)


def test_hostile_writer_moves_through_libvirt_throttled_then_switched_over(trips):
    t = trips[1]
    r = t.report
    assert r.completed and r.destination_running, r.table()
    assert t.dest_state == libvirt.VIR_DOMAIN_RUNNING
    assert t.source_state in (None, libvirt.VIR_DOMAIN_SHUTOFF)
    assert len(r.rounds) < 30, r.table()
    actions = [x.action for x in r.rounds]
    assert "throttle" in actions, actions
    assert "switch-over" not in actions[: actions.index("throttle")], actions
    assert r.max_throttle > 0  # QEMU applied ferry's throttle
    assert r.ended_by and r.ended_by != "qemu", r.table()
    assert r.downtime is not None and 0 < r.downtime < 10
    # libvirt mirrored the disk, and the guest finds every block it wrote.
    assert r.disk_size >= DISK_MB * MiB and r.disk_bytes > 0, r.table()
    assert_disk_intact(t)
    # The writer carries on on the destination where it left off.
    assert not t.crashed
    assert len(t.after) >= 2 and t.after[-1].t > t.after[0].t
    assert t.after[0].pages >= t.before[-1].pages


def test_ferry_migrate_libvirt_offline_copies_once_and_reports_the_downtime(trips):
    t = trips[2]
    rows = dict(re.findall(r"(?m)^(\w[\w /]*?)  +(.*)$", t.table))
    assert rows["status"] == "completed" and rows["mode"] == "offline", t.table
    assert rows["rounds"] == "0" and rows["ended by"] == "offline"
    assert t.dest_state == libvirt.VIR_DOMAIN_RUNNING
    # Paused for the whole copy, which crossed the 32 MiB/s link once.
    downtime = float(rows["downtime"].split()[0]) / 1000
    sent = float(rows["memory sent"].split()[0])
    assert downtime >= 0.8 * sent / 32, t.table
    assert float(rows["sent / size"].rstrip("x")) < 1.2
    assert not t.crashed
    assert_disk_intact(t)
    assert len(t.after) >= 2 and t.after[0].pages >= t.before[-1].pages
