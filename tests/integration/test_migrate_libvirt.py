"""`ferry migrate --libvirt`: a libvirt domain moved between two real libvirtd
daemons on this machine (tests/harness/libvirt_daemons.py), steered round by
round by the seed's policy through libvirt's job statistics and controls
(issue 8).

One hostile guest (CPU-bound writer at 128 MB/s, four times the 32 MiB/s
link) is booted once on the source and makes three trips: a migration
cancelled during its first pass (it stays on the source), a live migration
under the seed policy (it moves), and an offline migration back."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import libvirt
import pytest

from converters.events import EventStream
from converters.migrate_libvirt import LibvirtMigration
from converters.migrate_qmp import MigrationOptions
from converters.migrate_report import MigrationReport, MigrationRound
from tests.harness.libvirt_daemons import STREAM_DIR, Daemon, DaemonPair, why_not
from tests.harness.libvirt_guest import NAME, Console, domain_xml, write_wrapper
from tests.harness.migration_guest import Progress, have_tools
from tests.harness.migration_link import Link
from tests.harness.migration_run import LINK, WORKLOADS

MISSING = why_not() or have_tools()
pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
    pytest.mark.slow,
]
STREAM = f"{STREAM_DIR}/stream.sock"


@dataclass
class Trip:
    report: MigrationReport
    before: list[Progress]  # the writer's lines where it ran before
    after: list[Progress]  # where it ran after (new lines only)
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
    """Cancel once the source has sent `mib` MiB: mid-copy, however long
    a loaded host takes to set the migration up."""
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


def trip(src: Daemon, dst: Daemon, cancel_mib=None, offline=False, **kw) -> Trip:
    """Migrate the guest src -> dst over the 32 MiB/s relay: each daemon's
    QEMU sees STREAM in its own directory, and the relay joins the two."""
    src_console, dst_console = Console(src), Console(dst)
    dst_console.skip_past()
    before = src_console.progress()
    options = MigrationOptions(uri=f"unix:{STREAM}", bandwidth=LINK, **kw)
    events = EventStream()
    events.subscribe(lambda e: isinstance(e, MigrationRound) and print(e.line()))
    engine = LibvirtMigration(src.uri, NAME, dst.uri, options, events, offline)
    if cancel_mib is not None:
        threading.Thread(
            target=cancel_when_sent, args=(src, engine, cancel_mib), daemon=True
        ).start()
    with Link(src.host_path(STREAM), dst.host_path(STREAM), LINK):
        report = engine.run()
    print(report.table())
    # Wait for lines, not seconds: a loaded host can starve the guest.
    where = dst_console if report.completed else src_console
    if report.completed:
        after = dst_console.wait_progress(2, 60)
    else:
        after = src_console.wait_progress(2, 60)[len(before) :]
    return Trip(report, before, after, state(src), state(dst), where.crashed())


@pytest.fixture(scope="module")
def trips(tmp_path_factory):
    with DaemonPair() as pair:
        wrapper = write_wrapper(pair.dir / "qemu")
        conn = libvirt.open(pair.a.uri)
        conn.createXML(domain_xml(WORKLOADS["hostile"], wrapper), 0)
        conn.close()
        if len(Console(pair.a).wait_progress(2, 90)) < 2:
            pytest.fail(f"the guest did not start:\n{Console(pair.a).text()[-2000:]}")
        cancelled = trip(pair.a, pair.b, cancel_mib=32)
        live = trip(pair.a, pair.b, policy="seed", timeout=300)
        back = trip(pair.b, pair.a, offline=True, timeout=120)
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


def test_hostile_writer_moves_through_libvirt_throttled_then_switched_over(trips):
    t = trips[1]
    r = t.report
    print("\n".join(x.line() for x in r.rounds))
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
    # The writer carries on on the destination where it left off.
    assert not t.crashed
    assert len(t.after) >= 2 and t.after[-1].t > t.after[0].t
    assert t.after[0].pages >= t.before[-1].pages


def test_offline_libvirt_migration_copies_once_and_reports_the_downtime(trips):
    t = trips[2]
    r = t.report
    assert r.completed and r.mode == "offline" and not r.rounds, r.table()
    assert t.dest_state == libvirt.VIR_DOMAIN_RUNNING
    # Paused for the whole copy: at least what the link needs for the
    # memory QEMU sent.
    assert r.downtime == r.total_time and r.downtime >= 0.8 * r.ram_bytes / LINK
    assert r.ram_bytes < 1.2 * r.memory  # each page crossed once
    assert not t.crashed
    assert len(t.after) >= 2 and t.after[0].pages >= t.before[-1].pages
