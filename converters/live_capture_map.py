"""Extent maps of disks whose filesystems are mounted and in use.

Cold capture trusts a filesystem's allocation only when its journal is
clean, and a mounted ext4 or xfs always has a journal in use, so
``map_disk`` would send every mounted filesystem whole. Live capture can do
better because it maps twice:

- ``live_map``, before round 1, lets partclone read the allocation while
  the filesystem runs (through a loop device: partclone refuses a mounted
  device node). Bitmaps not yet checkpointed may be stale, so this map is a
  guess that only decides what round 1 sends;
- ``frozen_map``, under the final freeze, is exact: a freeze writes back
  all metadata (ext4 commits and checkpoints its journal and clears
  needs_recovery; xfs pushes its log to the metadata and covers it, though
  xfs_logprint still says DIRTY as no unmount record is written). What this
  map calls used and the rounds have not sent clean is sent in the final
  round, so a stale first map costs bytes, never data.

While filesystems are frozen nothing may write to them, ferry included:
``scratch_dir`` is a RAM filesystem for partclone's temporary files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from converters.disk_map import DiskMapReport, RegionReport, describe_disk
from converters.extents import ExtentKind, ExtentMap
from converters.used_blocks import (
    PARTCLONE_TOOLS,
    UsedBlocksError,
    _ext_metadata,
    loop_device,
    parse_domain,
)

log = logging.getLogger(__name__)
# Reasons map_filesystem gives for a journal in use: what a live (or, for
# xfs, frozen) filesystem always shows, and what live capture reconciles.
JOURNAL_IN_USE = ("ext journal needs recovery", "xfs log state DIRTY")
RAM_FILESYSTEMS = ("tmpfs", "ramfs")
# Filesystems the frozen map refreshes itself (btrfs needs used_blocks'
# DUP-mirror handling: its disks take the full path).
FAST_TOOLS = {"ext2", "ext3", "ext4", "xfs", "vfat", "ntfs"}
BLKFLSBUF = 0x1261  # _IO(0x12, 97), linux/fs.h


@dataclass
class LiveMap:
    map: ExtentMap
    report: DiskMapReport  # the layout: partitions and their filesystems
    # filesystems partclone could not read live (sent whole unless mapped
    # again under a freeze)
    unmapped: list[RegionReport] = field(default_factory=list)


def live_map(path: str) -> LiveMap:
    return _map(path)


def frozen_map(path: str, first: LiveMap | None = None) -> ExtentMap:
    """The exact map of a disk whose filesystems are all frozen. With the
    first map's layout (partitions do not move during a capture), only the
    filesystems are mapped again, by partclone without its progress thread
    (with it, each run lasts at least a second: 1.05 s against 0.05 s for a
    160 MiB ext4 here, and writers wait through all of it)."""
    drop_cache(path)
    with scratch_dir():
        if first is not None and all(_refreshable(r) for r in first.report.regions):
            return _refresh(path, first)
        return _map(path, fast=True).map


def frozen_first(path: str, first: LiveMap) -> LiveMap:
    """``first`` with the filesystems it could not map live mapped while
    frozen."""
    if not first.unmapped:
        return first
    drop_cache(path)
    emap = first.map
    with scratch_dir():
        for region in first.unmapped:
            emap = _overlay_free(emap, path, region, fast=True)
    return LiveMap(emap, first.report)


def _refreshable(region: RegionReport) -> bool:
    if region.fs_type in FAST_TOOLS:
        return True
    # Kept as mapped: a swap header, or sent whole for want of a tool.
    return region.method == "swap header" or (
        region.method == "whole" and region.fs_type not in PARTCLONE_TOOLS
    )


def _refresh(path: str, first: LiveMap) -> ExtentMap:
    emap = first.map
    for region in first.report.regions:
        if region.fs_type in FAST_TOOLS:
            emap = emap.overlay(region.offset, region.length, ExtentKind.DATA)
            emap = _overlay_free(emap, path, region, fast=True)
    return emap


def drop_cache(path: str) -> None:
    """Forget the device's cached pages (BLKFLSBUF): partclone reads through
    it, and a filesystem writes around it (xfs metadata, all file data)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            fcntl.ioctl(fd, BLKFLSBUF, 0)
    except OSError as e:
        log.warning("LIVEMAP cannot drop the cache of %s: %s", path, e)
    finally:
        os.close(fd)


def _map(path: str, fast: bool = False) -> LiveMap:
    report = describe_disk(path)
    emap, unmapped = report.map, []
    for region in report.regions:
        if region.method == "whole" and region.reason in JOURNAL_IN_USE:
            mapped = _overlay_free(emap, path, region, fast)
            if mapped is emap:
                unmapped.append(region)
            emap = mapped
    return LiveMap(emap, report, unmapped)


def _overlay_free(emap: ExtentMap, path: str, region: RegionReport, fast: bool):
    """``emap`` with the free blocks of ``region``'s filesystem as SKIP; as
    it was if partclone fails (the region stays DATA)."""
    tool = PARTCLONE_TOOLS[region.fs_type]
    try:
        with loop_device(path, region.offset, region.length) as dev:
            fsmap = partclone_unchecked(tool, dev, region.length, fast)
            if tool == "extfs":  # what partclone may call free (used_blocks)
                fsmap = fsmap.overlay_ranges(_ext_metadata(dev), ExtentKind.DATA)
    except (UsedBlocksError, subprocess.SubprocessError, OSError) as e:
        log.warning("LIVEMAP %s offset=%d whole: %s", path, region.offset, e)
        return emap
    free = [
        (region.offset + e.offset, e.length) for e in fsmap.of_kind(ExtentKind.SKIP)
    ]
    return emap.overlay_ranges(free, ExtentKind.SKIP, only=ExtentKind.DATA)


def partclone_unchecked(
    tool: str, device: str, length: int, fast: bool = False
) -> ExtentMap:
    """``partclone.<tool> -D`` with its consistency checks off (-I): on a
    running filesystem the on-disk free counts lag the bitmaps ("bitmap
    free count err"), which is expected here and reconciled later. ``fast``:
    no progress thread (-f 0), for small maps under the freeze."""
    with tempfile.TemporaryDirectory(prefix="ferry-partclone-") as tmp:
        domain, logfile = os.path.join(tmp, "domain"), os.path.join(tmp, "log")
        proc = subprocess.run(
            [f"partclone.{tool}", "-D", "-I", "-B", "-f", "0" if fast else "1"]
            + ["-s", device]
            + ["-O", domain, "-L", logfile],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not os.path.exists(domain):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            raise UsedBlocksError(f"partclone.{tool} failed: {' '.join(tail)}")
        with open(domain) as f:
            return parse_domain(f.read(), length)


def ram_dir() -> str | None:
    """A writable directory on a RAM filesystem, or None."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mounts[left.split()[4]] = right.split()[0]
    for candidate in ("/dev/shm", "/run", "/tmp"):
        if mounts.get(candidate) in RAM_FILESYSTEMS and os.access(candidate, os.W_OK):
            return candidate
    return None


@contextlib.contextmanager
def scratch_dir() -> Iterator[None]:
    """Temporary files go to RAM meanwhile (a write to a frozen filesystem
    would wait for the thaw, which waits for us)."""
    saved = tempfile.tempdir
    ram = ram_dir()
    if ram is None:
        log.warning("LIVEMAP no RAM filesystem for temporary files; using %s", saved)
    tempfile.tempdir = ram or saved
    try:
        yield
    finally:
        tempfile.tempdir = saved
