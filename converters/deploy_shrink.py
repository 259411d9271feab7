"""Deploying onto a disk smaller than the image (``--shrink``): the last
partition's ext2/3/4 filesystem is shrunk so the image fits.

The plan is made before a byte is written, from the image's partition table
and the filesystem's superblock (read through the source): the last
partition must hold ext2/3/4 (xfs cannot shrink), every other partition
must end before the new end, and the filesystem's used blocks, with a
margin for resize2fs's own needs, must fit the shrunk partition.

The write then goes through a split view of the image's size: what falls
on the target goes straight to it (direct I/O, verified as usual); what lies
past its end goes to a temporary qcow2 overlay whose backing file is the
target itself, seen as one file through ``qemu-storage-daemon``'s FUSE
export (no nbd or device-mapper needed). resize2fs and sfdisk shrink the
filesystem and the partition on that file, which moves the data from past
the end into the partition; the overlay is cut to the target's size and
committed into it, and a GPT's backup is moved to the target's end.

Only the allocated data past the target's end (plus what resize2fs moves)
is ever staged, in /var/tmp; a deploy with ``--shrink`` does not resume
from a journal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from converters.deploy_plan import DeployError
from converters.deploy_target import Target
from converters.deploy_write import WriteOptions, WriteStats, write_disk
from converters.events import EventStream

MiB = 1 << 20
SECTOR = 512
# The GPT backup: header and 128 entries of 128 bytes, in the last sectors.
GPT_TAIL = 33 * SECTOR
EXT_MAGIC = 0xEF53
EXT_64BIT = 0x80
EXT_EXTENTS = 0x40
# resize2fs needs room beyond the used blocks (group descriptors, the
# journal kept whole, inode tables of the groups that stay); refusing at
# less than this keeps a written disk from failing its shrink.
MARGIN_FRACTION = 0.10
MARGIN_MIN = 16 * MiB
STAGING = "/var/tmp"
FUSE_TIMEOUT = 30.0
EXTENDED = (0x05, 0x0F, 0x85)


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class ShrinkPlan:
    image_disk: str
    target: str
    image_size: int
    target_size: int
    label: str  # "dos" or "gpt"
    partition: Partition
    new_size: int  # of the partition and its filesystem
    fstype: str
    used: int  # the filesystem's used bytes

    def lines(self) -> list[str]:
        p = self.partition
        return [
            f"shrink plan for {self.target}: image disk {self.image_disk} is "
            f"{self.image_size} bytes, the disk {self.target_size}",
            f"  partition {p.number} ({self.fstype}, {self.used} bytes used): "
            f"{p.size} -> {self.new_size} bytes, from byte {p.start}",
            f"  its filesystem shrunk with resize2fs to {self.new_size} bytes "
            "before the partition; other partitions unchanged",
        ]


def partitions(head: bytes) -> tuple[str, list[Partition]]:
    """The label and partitions of the table in an image's first MiB."""
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        raise DeployError("the image has no partition table: it cannot be shrunk")
    if head[SECTOR : SECTOR + 8] == b"EFI PART":
        entries_lba, count, size = struct.unpack_from("<QII", head, SECTOR + 72)
        found = []
        for i in range(min(count, 128)):
            at = entries_lba * SECTOR + i * size
            entry = head[at : at + 48]
            if len(entry) < 48 or entry[:16] == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", entry, 32)
            found.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR))
        return "gpt", found
    found = []
    for i in range(4):
        entry = head[446 + 16 * i : 462 + 16 * i]
        kind = entry[4]
        start, sectors = struct.unpack_from("<II", entry, 8)
        if kind in EXTENDED:
            raise DeployError(
                "the image has an extended partition: shrinking logical "
                "partitions is not supported"
            )
        if kind and sectors:
            found.append(Partition(i + 1, start * SECTOR, sectors * SECTOR))
    return "dos", found


def ext_used(superblock: bytes) -> int | None:
    """Used bytes of an ext2/3/4 superblock (its 1024 bytes), None if it is
    not one."""
    if len(superblock) < 1024:
        return None
    if struct.unpack_from("<H", superblock, 56)[0] != EXT_MAGIC:
        return None
    blocks = struct.unpack_from("<I", superblock, 4)[0]
    free = struct.unpack_from("<I", superblock, 12)[0]
    block_size = 1024 << struct.unpack_from("<I", superblock, 24)[0]
    if struct.unpack_from("<I", superblock, 96)[0] & EXT_64BIT:
        blocks |= struct.unpack_from("<I", superblock, 0x150)[0] << 32
        free |= struct.unpack_from("<I", superblock, 0x158)[0] << 32
    return (blocks - free) * block_size


def plan(source, image_disk: str, target: str, target_size: int) -> ShrinkPlan:
    """Raises DeployError with the reason when the image cannot be shrunk
    onto ``target_size`` bytes; reads only the table and a superblock."""
    label, parts = partitions(source.read(0, min(MiB, source.size)))
    if not parts:
        raise DeployError("the image's partition table is empty: nothing to shrink")
    last = max(parts, key=lambda p: p.end)
    tail = GPT_TAIL if label == "gpt" else 0
    # The new end on a MiB boundary, before the GPT backup.
    new_end = (target_size - tail) // MiB * MiB
    others = [p for p in parts if p is not last and p.end > new_end]
    if others:
        raise DeployError(
            f"partition {others[0].number} of the image ends past the disk's "
            f"{target_size} bytes: only the last partition can be shrunk"
        )
    if last.start + MiB > new_end:
        raise DeployError(
            f"partition {last.number} starts at byte {last.start}, past what "
            f"the disk's {target_size} bytes can hold"
        )
    head = source.read(last.start, 4096)
    if head[:4] == b"XFSB":
        raise DeployError(
            f"partition {last.number} holds xfs, which cannot be shrunk "
            "(xfs filesystems only grow): use a disk of at least "
            f"{source.size} bytes"
        )
    used = ext_used(head[1024:2048])
    if used is None:
        raise DeployError(
            f"partition {last.number} holds no ext2/3/4 filesystem: only those "
            "can be shrunk"
        )
    new_size = min(new_end - last.start, last.size)
    need = used + max(int(used * MARGIN_FRACTION), MARGIN_MIN)
    if new_size < need:
        raise DeployError(
            f"the used data does not fit: partition {last.number} holds {used} "
            f"bytes, and shrunk to {new_size} bytes it needs at least {need}"
        )
    extents = struct.unpack_from("<I", head, 1024 + 96)[0] & EXT_EXTENTS
    fstype = "ext4" if extents else "ext2/3"
    return ShrinkPlan(
        image_disk, target, source.size, target_size, label, last, new_size,
        fstype, used,
    )  # fmt: skip


class _SplitTarget:
    """The image's size as one target: bytes before ``split`` on the disk,
    the rest in the overflow (the FUSE file of the overlay)."""

    def __init__(self, disk: Target, overflow: Target, size: int) -> None:
        self.disk, self.overflow = disk, overflow
        self.split = disk.size
        self.size = size
        self.path = disk.path
        self.sector = disk.sector

    def aligned(self, offset: int, length: int) -> bool:
        return self.disk.aligned(offset, length)

    def _parts(self, offset: int, length: int):
        end = offset + length
        if offset < self.split:
            yield self.disk, offset, min(end, self.split) - offset, 0
        if end > self.split:
            start = max(offset, self.split)
            yield self.overflow, start, end - start, start - offset

    def write(self, offset: int, data, buf) -> None:
        view = memoryview(data)
        for t, at, n, skip in self._parts(offset, len(view)):
            # A piece past the start of a view of buf is copied out first:
            # Target.write copies into buf from its first byte.
            piece = view[skip : skip + n]
            t.write(at, piece if skip == 0 else bytes(piece), buf)

    def read(self, offset: int, length: int, buf):
        pieces = list(self._parts(offset, length))
        if len(pieces) == 1:
            t, at, n, _ = pieces[0]
            return t.read(at, n, buf)
        return b"".join(bytes(t.read(at, n, buf)) for t, at, n, _ in pieces)

    def zero(self, offset: int, length: int) -> None:
        # Past the disk's end the overlay reads as zeros until written, and
        # a deploy with --shrink writes each range once.
        for t, at, n, _ in self._parts(offset, length):
            if t is self.disk:
                t.zero(at, n)

    def flush(self) -> None:
        self.disk.flush()
        self.overflow.flush()


def _run(*argv, ok=(0,)) -> str:
    out = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, errors="replace"
    )
    if out.returncode not in ok:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:]
        raise DeployError(f"{argv[0]} failed: {' '.join(detail) or out.returncode}")
    return out.stdout


@contextlib.contextmanager
def _staging() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="ferry-shrink-", dir=STAGING)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _fuse_view(overlay: str, view: str, size: int) -> Iterator[str]:
    """``overlay`` as the regular file ``view`` (qemu-storage-daemon's FUSE
    export); the daemon is ended by its pid on exit."""
    open(view, "w").close()  # noqa: SIM115 - the FUSE mount point
    proc = subprocess.Popen(
        [
            "qemu-storage-daemon",
            "--blockdev",
            f"driver=file,filename={overlay},node-name=file",
            "--blockdev",
            "driver=qcow2,file=file,node-name=disk",
            "--export",
            f"type=fuse,id=view,node-name=disk,mountpoint={view},writable=on",
        ],  # fmt: skip
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + FUSE_TIMEOUT
        while os.path.getsize(view) != size:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() else ""
                raise DeployError(f"qemu-storage-daemon did not start: {err.strip()}")
            time.sleep(0.05)
        yield view
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stderr.close()
        # The daemon unmounts its export; a killed one leaves it mounted.
        subprocess.run(["umount", view], capture_output=True, check=False)


def write_shrunk(
    source,
    shrink: ShrinkPlan,
    *,
    events: EventStream,
    options: WriteOptions | None = None,
) -> WriteStats:
    """Writes the image through the split view, shrinks the filesystem and
    its partition there, then commits the overlay into the target."""
    p = shrink.partition
    with _staging() as folder:
        overlay = os.path.join(folder, "overflow.qcow2")
        _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", shrink.target,
             "-F", "raw", overlay, shrink.image_size)  # fmt: skip
        view_file = os.path.join(folder, "disk")
        with _fuse_view(overlay, view_file, shrink.image_size) as view:
            with Target(shrink.target) as disk, Target(view) as overflow:
                split = _SplitTarget(disk, overflow, shrink.image_size)
                stats = write_disk(source, split, events=events, options=options)
            stats.target_size = shrink.target_size
            staged = os.stat(overlay).st_blocks * 512
            events.step(
                "shrink", f"partition {p.number}: {p.size} -> {shrink.new_size} bytes"
            )
            _shrink_filesystem(view, p, shrink.new_size)
            _run_input(
                f"{p.start // SECTOR},{shrink.new_size // SECTOR}\n",
                "sfdisk", "--no-reread", "--no-tell-kernel", "-N", p.number, view,
            )  # fmt: skip
        # What lies past the disk's end is no longer part of any partition.
        _run("qemu-img", "resize", "-q", "--shrink", "-f", "qcow2", overlay,
             shrink.target_size)  # fmt: skip
        _run("qemu-img", "commit", "-q", "-f", "qcow2", overlay)
    if shrink.label == "gpt":
        # The primary header still names the image's last sector, which
        # sfdisk takes for a broken table; sgdisk rebuilds the backup at
        # the disk's end from it.
        _run("sgdisk", "--move-second-header", shrink.target)
    events.log(
        f"shrink: partition {p.number} ({shrink.fstype}) {p.size} -> "
        f"{shrink.new_size} bytes; {staged} bytes were staged in {STAGING}"
    )
    return stats


def _shrink_filesystem(view: str, p: Partition, new_size: int) -> None:
    part = _run(
        "losetup", "-f", "--show", "--offset", p.start, "--sizelimit", p.size, view
    ).strip()
    try:
        # resize2fs insists on a freshly checked filesystem; 1: corrected.
        _run("e2fsck", "-f", "-y", part, ok=(0, 1))
        _run("resize2fs", part, f"{new_size // 1024}K")
    finally:
        subprocess.run(["losetup", "-d", part], capture_output=True, check=False)


def _run_input(text: str, *argv) -> str:
    out = subprocess.run(
        [str(a) for a in argv], input=text, capture_output=True, text=True
    )
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:]
        raise DeployError(f"{argv[0]} failed: {' '.join(detail)}")
    return out.stdout
