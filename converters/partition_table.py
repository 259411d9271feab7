"""Partition tables (MBR with extended/logical, GPT) read with pyparted.

The extent mapper needs each partition's place in bytes and a guess of what
it holds; everything outside the partitions found here (boot code, GPT
headers and the backup GPT, extended boot records, alignment gaps) stays
DATA. pyparted is the parted binding DESIGN.md names: V2P uses the same
library to grow and convert tables. Nothing here writes to the disk.

Signatures come from ``blkid -p`` (low-level probing, no cache): parted's own
filesystem probe knows fewer types and does not report an ambiguous
partition, which the mapper must treat as unknown.
"""

from __future__ import annotations

import enum
import logging
import os
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Labels whose layout we map; any other table (bsd, sun, mac, ...) makes the
# whole disk DATA rather than trust partitions we have never tested.
SUPPORTED_LABELS = ("msdos", "gpt")


class PartitionRole(enum.Enum):
    PRIMARY = "primary"  # also every GPT partition
    LOGICAL = "logical"
    EXTENDED = "extended"  # a container of logicals, never mapped itself


class PartitionTableError(Exception):
    pass


@dataclass(frozen=True)
class Signature:
    """What ``blkid -p`` found at a place: ``type`` such as "ext4", "xfs",
    "swap", "LVM2_member"; ``ambivalent`` when several signatures fight."""

    type: str | None = None
    usage: str | None = None
    uuid: str | None = None
    label: str | None = None
    pttype: str | None = None
    ambivalent: bool = False


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    length: int  # bytes
    role: PartitionRole
    flags: frozenset[str]  # parted's names: bios_grub, esp, boot, lvm, swap, ...
    name: str = ""  # GPT partition name
    fs_type: str | None = None  # blkid's type, or parted's guess

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class PartitionTable:
    label: str  # "msdos" or "gpt"
    sector_size: int
    disk_size: int
    partitions: tuple[Partition, ...]

    def mappable(self) -> list[Partition]:
        """Partitions that hold data of their own (not extended containers)."""
        return [p for p in self.partitions if p.role is not PartitionRole.EXTENDED]


def disk_size(path: str | os.PathLike) -> int:
    """Size in bytes of a raw image file or a block device."""
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def probe_signature(
    path: str | os.PathLike, offset: int = 0, length: int | None = None
) -> Signature:
    """Low-level probe of ``[offset, offset+length)`` of a file or device."""
    cmd = ["blkid", "-p", "-o", "export", "-O", str(offset)]
    if length is not None:
        cmd += ["-S", str(length)]
    proc = subprocess.run(
        [*cmd, os.fspath(path)], capture_output=True, text=True, check=False
    )
    # blkid -p: 0 found, 2 nothing found, 8 ambivalent result (man blkid).
    if proc.returncode == 8:
        return Signature(ambivalent=True)
    if proc.returncode != 0:
        return Signature()
    fields = dict(
        line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line
    )
    return Signature(
        type=fields.get("TYPE"),
        usage=fields.get("USAGE"),
        uuid=fields.get("UUID"),
        label=fields.get("LABEL"),
        pttype=fields.get("PTTYPE"),
    )


def read_partition_table(path: str | os.PathLike) -> PartitionTable:
    """The MBR or GPT of ``path``; raises PartitionTableError if there is
    none, the label is not one we map, or parted cannot make sense of it."""
    import parted  # Debian's python3-parted; imported late so tests without it run

    try:
        device = parted.getDevice(os.fspath(path))
    except Exception as e:  # _ped raises a handful of unrelated exception types
        raise PartitionTableError(f"{path}: {type(e).__name__}: {e}") from e
    # libparted keeps every device it opened in a cache by path, with the
    # size it saw then. A loop device reattached to a bigger disk would be
    # read with the old size, and parted crashes on the GPT it then finds
    # past that end: the entry goes as soon as this read is done.
    try:
        return _read_table(parted, device, path)
    finally:
        device.removeFromCache()


def _read_table(parted, device, path) -> PartitionTable:
    try:
        disk = parted.newDisk(device)
    except Exception as e:  # _ped raises a handful of unrelated exception types
        raise PartitionTableError(f"{path}: {type(e).__name__}: {e}") from e
    if disk.type not in SUPPORTED_LABELS:
        raise PartitionTableError(f"{path}: unsupported label {disk.type!r}")
    sector = device.sectorSize
    size = disk_size(path)
    parts = []
    for p in disk.partitions:
        role = {
            parted.PARTITION_LOGICAL: PartitionRole.LOGICAL,
            parted.PARTITION_EXTENDED: PartitionRole.EXTENDED,
        }.get(p.type, PartitionRole.PRIMARY)
        flags = frozenset(
            f.strip() for f in p.getFlagsAsString().split(",") if f.strip()
        )
        name = ""
        if disk.supportsFeature(parted.DISK_TYPE_PARTITION_NAME):
            name = p.name or ""
        start, length = p.geometry.start * sector, p.geometry.length * sector
        fs_type = None
        if role is not PartitionRole.EXTENDED:
            sig = probe_signature(path, start, length)
            fs_type = sig.type or (p.fileSystem.type if p.fileSystem else None)
        parts.append(Partition(p.number, start, length, role, flags, name, fs_type))
    table = PartitionTable(disk.type, sector, size, tuple(parts))
    log.info("TABLE path=%s label=%s partitions=%d", path, table.label, len(parts))
    return table


def overlapping(partitions: list[Partition]) -> set[int]:
    """Numbers of partitions that share bytes with another one. parted
    rejects most such tables, but a map must not let one partition's free
    space mark another's data SKIP, so the mapper checks for itself."""
    hits: set[int] = set()
    ordered = sorted(partitions, key=lambda p: p.start)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start >= a.end:
                break
            hits.update((a.number, b.number))
    return hits
