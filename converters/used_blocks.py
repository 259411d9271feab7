"""Which bytes of one filesystem are in use: the map of a partition or LV.

The used-block map comes from ``partclone.<fs> -D`` (Clonezilla's engine,
run in "domain" mode: it writes a ddrescue mapfile of used ranges instead of
an image, 3 s for 4 GiB here). Free space becomes SKIP, everything else DATA.

A map must never mark SKIP what the filesystem may still need, so before
trusting a bitmap we check what partclone does not:

- a journal or log that still needs replay (ext3/4 ``needs_recovery``, XFS
  dirty log, btrfs log tree, unclean NTFS ``$LogFile`` or hibernation) means
  the on-disk allocation may be stale: the whole filesystem is sent;
- partclone's extfsclone.c has a branch that calls every block of a
  BLOCK_UNINIT group free, backup superblock and descriptors included
  (0.3.23 here does not take it for mke2fs 1.47 filesystems, but the live
  image must not depend on which one it ships): every piece of metadata
  dumpe2fs lists is added as DATA;
- partclone.btrfs maps one copy of DUP chunks only: the other copy is added.

Anything unknown, ambiguous or failing is sent whole (zero detection is the
engine's job; ``zero_scan`` is here for callers that want it up front).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from converters.extents import Extent, ExtentKind, ExtentMap

log = logging.getLogger(__name__)
DATA, ZERO, SKIP = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.SKIP

# blkid TYPE -> partclone tool. Only types whose round trip the integration
# tests prove (fsck clean, files identical) are listed: partclone has more.
PARTCLONE_TOOLS = {
    "ext2": "extfs",
    "ext3": "extfs",
    "ext4": "extfs",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "vfat": "fat",
    "ntfs": "ntfs",
}
SWAP_PAGE_SIZES = (4096, 8192, 16384, 65536)  # x86, ..., arm64/ppc64 64 KiB


@dataclass(frozen=True)
class FsMap:
    """The map of one filesystem, relative to its first byte, and how it was
    made: ``method`` names the tool; ``reason`` says why a map is whole."""

    map: ExtentMap
    fs_type: str | None
    method: str
    reason: str = ""


class UsedBlocksError(Exception):
    pass


@contextlib.contextmanager
def loop_device(path: str | os.PathLike, offset: int, length: int) -> Iterator[str]:
    """A read-only loop device over ``[offset, offset+length)`` of a file or
    device: partclone needs a device of its own, and this host's kernel
    makes no partition nodes for loop devices (ENVIRONMENT.md)."""
    out = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", "--offset", str(offset)]
        + ["--sizelimit", str(length), os.fspath(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    dev = out.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def parse_domain(text: str, size: int, offset: int = 0) -> ExtentMap:
    """A partclone/ddrescue domain file as a map of ``size`` bytes.

    ``+`` (used) is DATA and ``?`` (not tried: free) is SKIP; any other
    status, and whatever the file does not cover, is DATA."""
    rows = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 3:
            pos, length = int(fields[0], 0) - offset, int(fields[1], 0)
            if pos < 0 or length < 0 or pos + length > size:
                raise UsedBlocksError(f"domain range {pos}+{length} outside {size}")
            rows.append((pos, length, fields[2]))
    if not rows:
        raise UsedBlocksError("empty domain file")
    free = [(pos, length) for pos, length, status in rows if status == "?"]
    return ExtentMap.whole(size, DATA).overlay_ranges(free, SKIP)


def map_filesystem(
    path: str | os.PathLike, offset: int, length: int, fs_type: str | None
) -> FsMap:
    """The map of the filesystem of type ``fs_type`` (blkid's name) found at
    ``offset`` in ``path``. Never raises for a bad filesystem: it is sent
    whole and the reason says why. The filesystem must not be mounted
    read-write meanwhile (capture refuses such disks): its bitmaps would
    change under the map."""
    whole = ExtentMap.whole(length, DATA)
    if fs_type == "swap":
        return swap_map(path, offset, length)
    tool = PARTCLONE_TOOLS.get(fs_type or "")
    if tool is None:
        reason = f"no used-block map for {fs_type}" if fs_type else "no filesystem"
        return FsMap(whole, fs_type, "whole", reason)
    if shutil.which(f"partclone.{tool}") is None:
        return FsMap(whole, fs_type, "whole", f"partclone.{tool} not installed")
    try:
        with loop_device(path, offset, length) as dev:
            if reason := _unsafe(fs_type, dev):
                return FsMap(whole, fs_type, "whole", reason)
            fsmap = run_partclone(tool, dev, length)
            if tool == "extfs":
                fsmap = fsmap.overlay_ranges(_ext_metadata(dev), DATA)
            elif tool == "btrfs":
                fsmap = _btrfs_mirrors(dev, fsmap)
    except (UsedBlocksError, subprocess.SubprocessError, OSError, struct.error) as e:
        log.warning("MAP fs=%s offset=%d whole reason=%s", fs_type, offset, e)
        return FsMap(whole, fs_type, "whole", str(e))
    return FsMap(fsmap, fs_type, f"partclone.{tool}")


# Filesystems smaller than this are mapped with partclone's -f 0.
FRESH_ZERO_BELOW = 64 << 30


def run_partclone(tool: str, device: str, length: int) -> ExtentMap:
    """``partclone.<tool> -D`` on ``device``: its used blocks as a map."""
    with tempfile.TemporaryDirectory(prefix="ferry-partclone-") as tmp:
        domain, logfile = os.path.join(tmp, "domain"), os.path.join(tmp, "log")
        # partclone joins its progress thread at the end, which sleeps -f
        # seconds between updates: with -f 1 a small filesystem's map waits
        # out the rest of that second (the bench disk's 4 GiB ext4: 1.1 s
        # with -f 1, 0.1-0.3 s with -f 0, the same CPU). A large one maps
        # for seconds anyway, and was measured slower with -f 0 (400 GiB
        # ext4: 3.4 s with -f 1, 4.6 s with -f 0); the default (2 s) waits
        # longest.
        fresh = "0" if length < FRESH_ZERO_BELOW else "1"
        proc = subprocess.run(
            [f"partclone.{tool}", "-D", "-B", "-f", fresh, "-s", device]
            + ["-O", domain, "-L", logfile],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not os.path.exists(domain):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise UsedBlocksError(f"partclone.{tool} failed: {' '.join(tail)}")
        with open(domain) as f:
            return parse_domain(f.read(), length)


def swap_map(path: str | os.PathLike, offset: int, length: int) -> FsMap:
    """Swap holds nothing worth sending once the machine is off, except its
    header (label, UUID: fstab and resume= name it). A hibernation image
    (any signature other than SWAPSPACE2) is sent whole."""
    with open(path, "rb") as f:
        for page in SWAP_PAGE_SIZES:
            if page > length:
                break
            f.seek(offset + page - 10)
            magic = f.read(10)
            if magic == b"SWAPSPACE2":
                emap = ExtentMap.whole(length, SKIP).overlay(0, page, DATA)
                return FsMap(emap, "swap", "swap header")
            if magic[-9:] in (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND"):
                break
    whole = ExtentMap.whole(length, DATA)
    return FsMap(whole, "swap", "whole", "swap without a plain header")


def zero_scan(
    path: str | os.PathLike, emap: ExtentMap, offset: int = 0, block: int = 1 << 20
) -> ExtentMap:
    """DATA extents read back and split into DATA and ZERO at ``block``
    granularity (aligned to ``block`` within the map)."""
    zeros = bytes(block)
    out: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for ext in emap.split(block):
            kind = ext.kind
            if kind is DATA:
                buf = os.pread(fd, ext.length, offset + ext.offset)
                if buf == zeros[: ext.length]:
                    kind = ZERO
            out.append(Extent(ext.offset, ext.length, kind))
    finally:
        os.close(fd)
    return ExtentMap(emap.size, out).normalized()


def _read(dev: str, offset: int, length: int) -> bytes:
    with open(dev, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _unsafe(fs_type: str | None, dev: str) -> str | None:
    """Why the on-disk allocation of ``dev`` cannot be trusted, or None."""
    if fs_type in ("ext2", "ext3", "ext4"):
        sb = _read(dev, 1024, 1024)
        if sb[0x38:0x3A] != b"\x53\xef":
            return "no ext superblock"
        (incompat,) = struct.unpack_from("<I", sb, 0x60)
        if incompat & 0x4:  # EXT3_FEATURE_INCOMPAT_RECOVER
            return "ext journal needs recovery"
    elif fs_type == "xfs":
        return _xfs_log_dirty(dev)
    elif fs_type == "btrfs":
        sb = _read(dev, 0x10000, 4096)
        if sb[0x40:0x48] != b"_BHRfS_M":
            return "no btrfs superblock"
        (log_root,) = struct.unpack_from("<Q", sb, 0x60)
        (num_devices,) = struct.unpack_from("<Q", sb, 0x88)
        if log_root:
            return "btrfs log tree needs replay"
        if num_devices != 1:
            return f"btrfs spans {num_devices} devices"
    elif fs_type == "ntfs":
        return _ntfs_unclean(dev)
    return None


def _xfs_log_dirty(dev: str) -> str | None:
    # xfs_logprint prints "log tail: N head: M state: <CLEAN|DIRTY>" first and
    # then every record: read the header only, then stop it.
    proc = subprocess.Popen(
        ["xfs_logprint", "-t", dev],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    state = None
    try:
        for _, line in zip(range(50), proc.stdout, strict=False):
            if m := re.search(r"state:\s*<(\w+)>", line):
                state = m.group(1)
                break
    finally:
        proc.kill()
        proc.wait()
    return None if state == "CLEAN" else f"xfs log state {state or 'unknown'}"


def _head(cmd: list[str], size: int) -> bytes:
    """The first ``size`` bytes a command prints (hiberfil.sys is gigabytes:
    read its head and stop the reader)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = b""
    try:
        while len(out) < size and (chunk := proc.stdout.read(size - len(out))):
            out += chunk
    finally:
        proc.kill()
        proc.wait()
    return out


def _ntfs_unclean(dev: str) -> str | None:
    """An NTFS with a $LogFile to replay or a hibernated Windows may hold
    clusters its $Bitmap does not show yet. ntfs-3g checks both only when
    mounting read-write, which a capture never does, so check here."""
    if _head(["ntfscat", dev, "hiberfil.sys"], 4).lower() == b"hibr":
        return "windows is hibernated"
    head = _head(["ntfscat", "-i", "2", dev], 16384)  # inode 2 is $LogFile
    if len(head) < 16384:
        return "cannot read $LogFile"
    return ntfs_logfile_state(head)


def ntfs_logfile_state(head: bytes) -> str | None:
    """None when the first 16 KiB of a $LogFile say nothing awaits replay."""
    if head == b"\xff" * len(head):  # emptied by ntfs-3g or mkntfs
        return None
    # Two restart pages ("RSTR"), at 0 and at the system page size; the
    # newest (current_lsn) rules. Its restart area is clean when no client
    # is in use or RESTART_VOLUME_IS_CLEAN is set (ntfs-3g logfile.c).
    (second,) = struct.unpack_from("<I", head, 0x10)
    best = None
    for page in {0, second if second in (4096, 8192) else 4096}:
        if head[page : page + 4] != b"RSTR":
            continue
        (area,) = struct.unpack_from("<H", head, page + 0x18)
        lsn, _, _, in_use, flags = struct.unpack_from("<QHHHH", head, page + area)
        if best is None or lsn > best[0]:
            best = (lsn, in_use == 0xFFFF or bool(flags & 0x2))
    return None if best and best[1] else "ntfs $LogFile is not clean"


_EXT_META = re.compile(
    r"(?:superblock|Group descriptors|GDT blocks|bitmap|Inode table) at "
    r"(\d+)(?:-(\d+))?"
)


def _ext_metadata(dev: str) -> list[tuple[int, int]]:
    """Byte ranges of every superblock copy, descriptor, bitmap and inode
    table dumpe2fs lists, including those in BLOCK_UNINIT groups."""
    out = subprocess.run(
        ["dumpe2fs", dev], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^Block size:\s+(\d+)", out, re.M)
    if not m:
        raise UsedBlocksError("dumpe2fs gave no block size")
    bs = int(m.group(1))
    ranges = []
    for m in _EXT_META.finditer(out):
        first = int(m.group(1))
        last = int(m.group(2) or first)
        ranges.append((first * bs, (last - first + 1) * bs))
    return ranges


_STRIPE = re.compile(r"stripe \d+ devid \d+ offset (\d+)")
_CHUNK = re.compile(r"length (\d+) owner \d+ stripe_len \d+ type (\S+)")


def _btrfs_mirrors(dev: str, fsmap: ExtentMap) -> ExtentMap:
    """Both copies of each DUP chunk get the union of their used ranges."""
    out = subprocess.run(
        ["btrfs", "inspect-internal", "dump-tree", "-t", "chunk", dev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chunks = 0
    for chunk in re.split(r"\bitem \d+ key ", out)[1:]:
        if "CHUNK_ITEM" not in chunk:
            continue
        head = _CHUNK.search(chunk)
        stripes = [int(s) for s in _STRIPE.findall(chunk)]
        if not head or not stripes:
            raise UsedBlocksError("unreadable btrfs chunk tree")
        chunks += 1
        length, profile = int(head.group(1)), head.group(2)
        if len(stripes) == 1:
            continue
        if "DUP" not in profile:
            raise UsedBlocksError(f"btrfs chunk profile {profile} on one device")
        if max(stripes) + length > fsmap.size:
            raise UsedBlocksError("btrfs chunk past the end of the filesystem")
        used = []
        for start in stripes:
            part = fsmap.slice(start, length)
            used += [(e.offset, e.length) for e in part.of_kind(DATA)]
        for start in stripes:
            fsmap = fsmap.overlay_ranges([(start + o, n) for o, n in used], DATA)
    if not chunks:
        raise UsedBlocksError("no chunks in the btrfs chunk tree")
    return fsmap
