"""Migration without shared storage: the guest's disk is mirrored into the
destination's over NBD while the guest keeps writing, and the guest checks
every block on the destination (issue 8). Offline migration too."""

from __future__ import annotations

import re

import pytest

from tests.harness.migration_guest import DISK_CHECK, have_tools
from tests.harness.migration_run import DISK_MB, WORKLOADS, GuestSession, MiB
from tests.integration.test_migrate_live import assert_moved

MISSING = have_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
WRITES = re.compile(r"FERRY-DISK verify=\d+ .*writes=(\d+)")


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """One guest with a disk, booted once, moved live and then offline."""
    path = tmp_path_factory.mktemp("storage")
    with GuestSession(path, WORKLOADS["storage"], storage=True) as session:
        yield session


def checked_disk(guest) -> str:
    """The console of the QEMU the guest now runs on, once the guest has
    checked its whole disk there at least once."""
    assert guest.current.wait_for(r"FERRY-DISK verify=", 60), guest.current.console()
    return guest.current.console()


def test_storage_copy_keeps_every_block_the_guest_wrote(guest):
    o = guest.hop(policy="seed", settle=3)
    r = o.report
    print(r.table())
    assert_moved(o)
    assert r.disk_size == DISK_MB * MiB
    assert r.disk_bytes >= r.disk_size
    # The guest wrote during the migration: its write counter moved on
    # between the source's last check and the destination's first.
    on_source = [int(w) for w in WRITES.findall(o.source_console)]
    dest = checked_disk(guest)
    on_dest = [int(w) for w in WRITES.findall(dest)]
    assert on_dest and on_dest[0] > on_source[-1], (on_source, on_dest)
    # Every block on the destination's disk is the generation the guest
    # last wrote there, with a valid checksum: the marker says ok.
    checks = DISK_CHECK.findall(dest)
    for _, blocks, bad, result in checks:
        assert (int(bad), result) == (0, "ok")
        assert int(blocks) == WORKLOADS["storage"].disk_mb * MiB // 4096


def test_offline_migration_copies_once_and_reports_its_downtime(guest):
    o = guest.hop(offline=True, settle=3)
    r = o.report
    print(r.table())
    assert_moved(o)
    assert r.mode == "offline" and not r.rounds
    assert r.downtime == pytest.approx(r.total_time)
    # One copy: memory once (zero pages cost a header each), disk once.
    assert r.ram_bytes < r.memory and r.disk_bytes <= 1.1 * r.disk_size
    # A paused guest writes nothing: no write between the source's last
    # check and the destination's first check is lost or added.
    checks = DISK_CHECK.findall(checked_disk(guest))
    assert all(c[2] == "0" and c[3] == "ok" for c in checks), checks
