"""The libvirt backend's pieces that need no daemon: libvirt's job statistics
read as QEMU's counters, URIs in libvirt's spelling, the migration flags,
`--libvirt` on the command line, and the error when libvirt is not there."""

from __future__ import annotations

import argparse

import libvirt
import pytest

from converters.cli import FerryError
from converters.migrate_command import options_from, register
from converters.migrate_endpoint import MigrationError
from converters.migrate_libvirt import LibvirtMigration
from converters.migrate_libvirt_controls import (
    JobStats,
    migrate_flags,
    migrate_params,
    stream_uri,
)
from converters.migrate_qmp import MigrationOptions
from converters.migrate_rounds import RoundTracker

# virsh domjobinfo of a migration in its second round (libvirt 9.0).
ACTIVE = {
    "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
    "time_elapsed": 6773,
    "memory_total": 268836864,
    "memory_processed": 123043836,
    "memory_remaining": 20459520,
    "memory_iteration": 2,
    "memory_normal": 29901,
    "memory_constant": 36623,
    "memory_page_size": 4096,
    "auto_converge_throttle": 30,
}


def parse(*argv: str):
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["migrate", *argv])


def test_job_statistics_read_as_qemus_migration_counters():
    s = JobStats.of(ACTIVE)
    assert s.active and s.throttle == 30 and s.elapsed == pytest.approx(6.773)
    assert s.ram == {
        "dirty-sync-count": 2,
        "transferred": 123043836,
        "remaining": 20459520,
        "normal": 29901,
        "duplicate": 36623,
        "page-size": 4096,
    }
    assert s.disk is None
    # The same counters make a round for the policy.
    r = RoundTracker(268836864, 0.0).update(6.8, s.ram, s.disk)
    assert r.number == 1 and r.bytes_sent == 123043836
    assert r.bytes_remaining == 20459520


def test_disk_statistics_read_as_a_mirror_and_setup_has_no_memory_yet():
    s = JobStats.of(
        {
            "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
            "memory_iteration": 0,
            "disk_total": 64 << 20,
            "disk_processed": 16 << 20,
        }
    )
    assert s.ram is None
    assert s.disk.remaining == 48 << 20
    done = JobStats.of({"type": libvirt.VIR_DOMAIN_JOB_COMPLETED, "downtime": 579})
    assert not done.active and done.downtime == pytest.approx(0.579)


def test_stream_uris_take_qmp_or_libvirt_spelling():
    assert stream_uri("unix:/run/m.sock") == "unix:///run/m.sock"
    assert stream_uri("tcp:kvm2:49152") == "tcp://kvm2:49152"
    assert stream_uri("tcp://kvm2:49152") == "tcp://kvm2:49152"
    with pytest.raises(ValueError, match="unix:/path"):
        stream_uri("kvm2")


def test_flags_and_parameters_of_a_live_migration_with_storage():
    flags = migrate_flags(live=True, copy_storage=True, auto_converge=True)
    for flag in (
        libvirt.VIR_MIGRATE_PEER2PEER,
        libvirt.VIR_MIGRATE_LIVE,
        libvirt.VIR_MIGRATE_NON_SHARED_DISK,
        libvirt.VIR_MIGRATE_AUTO_CONVERGE,
    ):
        assert flags & flag
    assert not migrate_flags(False, False, False) & libvirt.VIR_MIGRATE_LIVE
    params = migrate_params("vm1", "tcp:kvm2:49152", 32 << 20, None)
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://kvm2:49152"
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 32  # MiB/s


def test_libvirt_options_leave_the_stream_to_libvirt_unless_told():
    o = options_from(
        parse("vm1", "--libvirt", "qemu:///system", "--to", "qemu+ssh://b/system")
    )
    assert o.uri == "" and o.policy == "seed"
    o = options_from(
        parse("vm1", "--libvirt", "qemu:///system", "--to", "x", "--uri", "tcp:b:5000")
    )
    assert o.uri == "tcp://b:5000"
    with pytest.raises(FerryError, match="--listen"):
        options_from(
            parse("vm1", "--libvirt", "qemu:///system", "--to", "x", "--listen", "y")
        )
    with pytest.raises(FerryError, match="unix:/path"):
        options_from(
            parse("vm1", "--libvirt", "qemu:///system", "--to", "x", "--uri", "b")
        )


def test_an_unreachable_libvirt_is_a_clear_error(tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/none"
    engine = LibvirtMigration(uri, "vm1", uri, MigrationOptions(uri=""))
    with pytest.raises(MigrationError, match="cannot reach libvirt at"):
        engine.run()
