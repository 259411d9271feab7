"""libvirt's side of a migration as ferry's engine needs it: job statistics
turned into the counters migrate_rounds reads, the few settings libvirt has
no API for (sent through its QEMU monitor passthrough), the flags and
parameters of `migrateToURI3`, and URIs in libvirt's spelling.

libvirt's job statistics are QEMU's `query-migrate` under other names
(qemuMigrationAnyFetchStats, src/qemu/qemu_migration.c): memory_processed is
`ram.transferred`, memory_remaining `ram.remaining`, memory_normal and
memory_constant the normal and zero pages sent, memory_iteration QEMU's
`dirty-sync-count`, auto_converge_throttle its `cpu-throttle-percentage`;
disk_processed, disk_total and disk_remaining sum its NBD mirrors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import libvirt
import libvirt_qemu

from converters.migrate_controls import throttle_parameters
from converters.migrate_disks import MirrorStatus

# Throttle settings libvirt cannot change while a job runs (it sets
# cpu-throttle-initial/-increment only when the migration starts, and has no
# parameter at all for the trigger threshold or the cap), so ferry sets them
# through the monitor, saves them first and restores them on give-up.
THROTTLE_SETTINGS = tuple(throttle_parameters(0))
MiB = 1 << 20


@dataclass(frozen=True)
class JobStats:
    """One reading of `virDomainGetJobStats`."""

    active: bool  # a job (the migration) runs
    elapsed: float  # seconds, libvirt's count from the job's start
    memory_total: int
    ram: dict | None  # the `query-migrate` "ram" fields migrate_rounds reads
    disk: MirrorStatus | None  # the NBD mirrors, when disks are copied
    throttle: int  # % CPU throttle QEMU applies now
    downtime: float | None  # seconds, on a completed job

    @classmethod
    def of(cls, stats: dict) -> JobStats:
        active = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) in (
            libvirt.VIR_DOMAIN_JOB_BOUNDED,
            libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
        )
        ram = None
        if stats.get("memory_iteration", 0) >= 1 and "memory_normal" in stats:
            ram = {
                "dirty-sync-count": stats["memory_iteration"],
                "transferred": stats.get("memory_processed", 0),
                "remaining": stats.get("memory_remaining", 0),
                "normal": stats.get("memory_normal", 0),
                "duplicate": stats.get("memory_constant", 0),
                "page-size": stats.get("memory_page_size", 4096),
            }
        disk = None
        if stats.get("disk_total"):
            copied = stats.get("disk_processed", 0)
            disk = MirrorStatus(copied, stats["disk_total"], True)
        downtime = stats.get("downtime")
        return cls(
            active,
            stats.get("time_elapsed", 0) / 1000,
            stats.get("memory_total", 0),
            ram,
            disk,
            stats.get("auto_converge_throttle", 0),
            None if downtime is None else downtime / 1000,
        )


def job_stats(dom: libvirt.virDomain, completed: bool = False) -> JobStats | None:
    """The domain's current (or last completed) job, None once it is gone."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
    try:
        return JobStats.of(dom.jobStats(flags))
    except libvirt.libvirtError:
        return None


def monitor(dom: libvirt.virDomain, command: str, arguments: dict | None = None):
    """One QMP command through libvirt's monitor passthrough, for what
    libvirt has no API for. libvirt marks the domain tainted
    ("custom-monitor") in its log; it runs the command as a query job, which
    a migration allows."""
    message: dict = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(message), 0))
    if "error" in reply:
        raise libvirt.libvirtError(reply["error"].get("desc", str(reply["error"])))
    return reply.get("return")


def set_throttle(dom: libvirt.virDomain, level: int) -> None:
    monitor(dom, "migrate-set-parameters", throttle_parameters(level))


def saved_throttle(dom: libvirt.virDomain) -> dict[str, int]:
    params = monitor(dom, "query-migrate-parameters") or {}
    return {k: params[k] for k in THROTTLE_SETTINGS if k in params}


def stream_uri(text: str) -> str:
    """QMP's `unix:/path` and `tcp:HOST:PORT` (as the QMP backend takes them)
    in libvirt's URI form, `unix:///path` and `tcp://HOST:PORT`; libvirt's
    own forms pass unchanged."""
    if "://" in text:
        return text
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return f"unix://{rest}"
    if kind == "tcp" and rest:
        return f"tcp://{rest}"
    raise ValueError(f"{text!r}: use unix:/path or tcp:HOST:PORT")


def migrate_flags(
    live: bool, copy_storage: bool, auto_converge: bool, sync_writes: bool = False
) -> int:
    # Peer to peer: the source's libvirtd drives the destination's itself, so
    # the migration survives ferry's own connection and its job is one job.
    flags = libvirt.VIR_MIGRATE_PEER2PEER
    if live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if copy_storage:
        # libvirt mirrors each disk into an NBD export on the destination
        # (drive-mirror), ready before memory goes and ended while paused.
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        if sync_writes:
            # The mirror's copy-mode=write-blocking (libvirt 8.0): a guest
            # write completes once the destination has it, so the disk's
            # dirty set cannot outgrow the link (the pre-copy rule "limit the
            # writer", as migrate_disks does for QMP).
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    return flags


def migrate_params(
    name: str, uri: str | None, bandwidth: int | None, disks_uri: str | None
) -> dict:
    params: dict = {libvirt.VIR_MIGRATE_PARAM_DEST_NAME: name}
    if uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = stream_uri(uri)
    if bandwidth:
        # libvirt takes MiB/s.
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = max(1, bandwidth // MiB)
    if disks_uri:
        params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = stream_uri(disks_uri)
    return params
