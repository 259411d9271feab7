"""The extent map of a whole disk: what the transfer engine sends.

``map_disk`` reads a block device or a raw image: the partition table
(MBR/GPT), each partition through its filesystem (``used_blocks``) or its
LVM physical volume (``lvm_map``), and every byte outside the partitions as
DATA (boot code, GPT headers and backup, extended boot records, gaps). A raw
image file's holes become ZERO. The rule every branch keeps: SKIP only where
a filesystem or LVM says the bytes are free; doubt means DATA.

``map_image`` asks a qcow2 (or any format qemu-nbd opens) for its own
allocation over NBD block status: DATA where allocated, ZERO where it
reads as zeros. It knows nothing of filesystems, so it never says SKIP.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field

from converters.extents import Extent, ExtentKind, ExtentMap
from converters.lvm_map import map_pv
from converters.partition_table import (
    PartitionTable,
    PartitionTableError,
    disk_size,
    overlapping,
    probe_signature,
    read_partition_table,
)
from converters.used_blocks import FsMap, map_filesystem

log = logging.getLogger(__name__)
DATA, ZERO, SKIP = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.SKIP
# qemu-nbd answers block status for at most this much per request; the NBD
# spec lets servers cap it and "not all servers can support 4GiB" (libnbd).
BLOCK_STATUS_STEP = 1 << 30


@dataclass(frozen=True)
class RegionReport:
    """How one part of the disk was mapped, for logs and progress totals."""

    what: str  # "partition 2", "whole disk"
    offset: int
    length: int
    fs_type: str | None
    method: str  # "partclone.xfs", "swap header", "lvm vg ...", "whole"
    reason: str = ""
    skip: int = 0  # bytes of this region marked SKIP
    seconds: float = 0.0  # time spent mapping it


@dataclass
class DiskMapReport:
    path: str
    map: ExtentMap
    table: PartitionTable | None = None
    regions: list[RegionReport] = field(default_factory=list)
    note: str = ""  # why the disk as a whole was sent whole, if it was


def map_disk(path: str | os.PathLike) -> ExtentMap:
    return describe_disk(path).map


def describe_disk(path: str | os.PathLike) -> DiskMapReport:
    path = os.fspath(path)
    size = disk_size(path)
    report = DiskMapReport(path, ExtentMap.whole(size, DATA))
    sig = probe_signature(path)
    if sig.ambivalent or (sig.type and sig.pttype):
        report.note = "several signatures on the disk"
    elif sig.pttype:
        try:
            report.table = read_partition_table(path)
        except PartitionTableError as e:
            report.note = str(e)
        else:
            _map_partitions(path, report)
    elif sig.type:
        started = time.monotonic()
        fs = map_region(path, 0, size, sig.type)
        report.map = fs.map
        report.regions.append(_region("whole disk", 0, fs, started))
    else:
        report.note = "no partition table or filesystem"
    if report.note:
        log.info("MAP path=%s whole reason=%s", path, report.note)
    report.map = _holes_as_zero(path, report.map)
    report.map.validate()
    return report


def map_region(path: str, offset: int, length: int, fs_type: str | None) -> FsMap:
    """One partition (or whole-disk filesystem or PV) as its own map."""
    if fs_type == "LVM2_member":
        return map_pv(path, offset, length)
    return map_filesystem(path, offset, length, fs_type)


def _map_partitions(path: str, report: DiskMapReport) -> None:
    table = report.table
    parts = table.mappable()
    shared = overlapping(parts)
    for part in parts:
        what = f"partition {part.number}"
        started = time.monotonic()
        if part.end > table.disk_size:
            reason = "partition runs past the end of the disk"
            fs = FsMap(ExtentMap.whole(0), part.fs_type, "whole", reason)
        elif part.number in shared:
            reason = "partition overlaps another"
            fs = FsMap(ExtentMap.whole(part.length), part.fs_type, "whole", reason)
        else:
            sig = probe_signature(path, part.start, part.length)
            fs_type = None if sig.ambivalent else sig.type
            fs = map_region(path, part.start, part.length, fs_type)
            report.map = report.map.embed(part.start, fs.map)
        report.regions.append(_region(what, part.start, fs, started))


def _region(what: str, offset: int, fs: FsMap, started: float) -> RegionReport:
    region = RegionReport(
        what,
        offset,
        fs.map.size,
        fs.fs_type,
        fs.method,
        fs.reason,
        fs.map.bytes_of(SKIP),
        round(time.monotonic() - started, 3),
    )
    log.info(
        "MAP region=%r offset=%d length=%d fs=%s method=%s skip=%d "
        "seconds=%.2f reason=%r",
        what,
        offset,
        region.length,
        fs.fs_type,
        fs.method,
        region.skip,
        region.seconds,
        fs.reason,
    )
    return region


def file_holes(path: str) -> list[tuple[int, int]]:
    """(offset, length) of the holes of a sparse regular file, which read as
    zeros for certain; empty for block devices."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        size = os.fstat(fd).st_size
        holes, pos = [], 0
        while pos < size:
            try:
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError as e:
                if e.errno in (errno.ENXIO, errno.EINVAL):
                    break
                raise
            if hole >= size:
                break
            try:
                data = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                data = size  # a hole to the end
            holes.append((hole, data - hole))
            pos = data
        return holes
    finally:
        os.close(fd)


def _holes_as_zero(path: str, emap: ExtentMap) -> ExtentMap:
    return emap.overlay_ranges(file_holes(path), ZERO, only=DATA)


def map_nbd(h) -> ExtentMap:
    """The allocation an NBD export reports (``base:allocation``) as a map;
    ``h`` is a connected ``nbd.NBD`` that asked for that context."""
    import nbd

    size = h.get_size()
    if not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
        return ExtentMap.whole(size, DATA)
    out: list[Extent] = []
    pos = 0
    while pos < size:
        entries: list[int] = []

        def collect(metacontext, offset, got, err, entries=entries):
            if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
                entries.extend(got)
            return 0

        h.block_status(min(size - pos, BLOCK_STATUS_STEP), pos, collect)
        start = pos
        for length, flags in zip(entries[::2], entries[1::2], strict=True):
            length = min(length, size - pos)
            if length <= 0:
                break
            out.append(Extent(pos, length, ZERO if flags & nbd.STATE_ZERO else DATA))
            pos += length
        if pos == start:
            raise OSError(f"NBD block status made no progress at {pos}")
    emap = ExtentMap(size, out).normalized()
    emap.validate()
    return emap


def map_image(path: str | os.PathLike, fmt: str = "qcow2") -> ExtentMap:
    """Allocation of an image through a private ``qemu-nbd`` (read-only,
    systemd socket activation: libnbd makes the socket and ends the server
    when the handle closes)."""
    import nbd

    h = nbd.NBD()
    try:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_systemd_socket_activation(
            ["qemu-nbd", "--read-only", "--format", fmt, os.fspath(path)]
        )
        return map_nbd(h)
    finally:
        # libnbd ends the server when the handle is freed (no close() in
        # the bindings of Debian 12's libnbd 1.14); shut down cleanly first.
        if h.aio_is_ready():
            h.shutdown()
        del h


def map_qcow2(path: str | os.PathLike) -> ExtentMap:
    return map_image(path, "qcow2")
