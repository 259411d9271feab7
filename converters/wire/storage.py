"""What ``ferry serve`` keeps on disk, and the records it keeps there.

    STORAGE/.ferry/             certificate, key and secret (pairing.py)
    STORAGE/SESSION/session.json    SessionRecord: disks, sizes, states
    STORAGE/SESSION/inventory.json  what the live side said about itself
    STORAGE/SESSION/serve.log       this session's log lines
    STORAGE/SESSION/DISK.qcow2      the image
    STORAGE/SESSION/DISK.journal    committed ranges (journal.py)
    STORAGE/SESSION/DISK.map.json   the extent map the client sends by

A disk's record says ``complete`` only after the server checked that the
journal covers every DATA and ZERO extent of its map.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from converters.extents import ExtentKind, ExtentMap

from .journal import _fsync_dir

IDENTITY_DIR = ".ferry"
SESSION_FILE = "session.json"
INVENTORY_FILE = "inventory.json"
LOG_FILE = "serve.log"

# Room kept free beyond what the disks' data needs: qcow2 metadata grows in
# steps and the journal and logs need a little too.
MARGIN = 64 << 20


@dataclass
class DiskRecord:
    name: str
    size: int
    data_bytes: int
    zero_bytes: int
    skip_bytes: int
    complete: bool = False
    completed_at: float | None = None
    error: str | None = None

    @classmethod
    def for_map(cls, name: str, emap: ExtentMap) -> DiskRecord:
        return cls(
            name,
            emap.size,
            emap.bytes_of(ExtentKind.DATA),
            emap.bytes_of(ExtentKind.ZERO),
            emap.bytes_of(ExtentKind.SKIP),
        )


@dataclass
class SessionRecord:
    name: str
    disks: list[DiskRecord]
    created_at: float = field(default_factory=time.time)
    peer: str = ""

    def disk(self, name: str) -> DiskRecord | None:
        return next((d for d in self.disks if d.name == name), None)

    @property
    def complete(self) -> bool:
        return all(d.complete for d in self.disks)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> SessionRecord:
        disks = [DiskRecord(**d) for d in obj["disks"]]
        return cls(obj["name"], disks, obj["created_at"], obj.get("peer", ""))


class SessionDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def record_path(self) -> Path:
        return self.root / SESSION_FILE

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    def image(self, disk: str) -> Path:
        return self.root / f"{disk}.qcow2"

    def journal(self, disk: str) -> Path:
        return self.root / f"{disk}.journal"

    def map_path(self, disk: str) -> Path:
        return self.root / f"{disk}.map.json"

    def exists(self) -> bool:
        return self.record_path.exists()

    def create(self) -> None:
        self.root.mkdir(mode=0o750)
        _fsync_dir(self.root.parent)

    def load_record(self) -> SessionRecord:
        return SessionRecord.from_json(json.loads(self.record_path.read_text()))

    def save_record(self, record: SessionRecord) -> None:
        write_json(self.record_path, record.to_json())

    def save_inventory(self, inventory: dict) -> None:
        write_json(self.root / INVENTORY_FILE, inventory)

    def load_map(self, disk: str) -> ExtentMap:
        return ExtentMap.from_json(json.loads(self.map_path(disk).read_text()))

    def save_map(self, disk: str, emap: ExtentMap) -> None:
        write_json(self.map_path(disk), emap.to_json(), indent=None)

    def allocated(self, disk: str) -> int:
        try:
            return self.image(disk).stat().st_blocks * 512
        except FileNotFoundError:
            return 0


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """Atomically: a reader (or a crash) sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def qcow2_overhead(size: int) -> int:
    """Metadata of a qcow2 with 64 KiB clusters: an 8-byte L2 entry and a
    2-byte refcount per cluster, plus tables' own clusters (rounded up)."""
    clusters = -(-size // (64 << 10))
    return clusters * 10 + (4 << 20)


def space_needed(record: DiskRecord, allocated: int = 0) -> int:
    """Bytes the rest of a disk's transfer can still take from storage."""
    return max(0, record.data_bytes + qcow2_overhead(record.size) - allocated)
