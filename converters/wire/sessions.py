"""Sessions on the KVM side: one per live machine, each with its disks.

A session is created (or found again, for a resume) from the client's
description of its disks and their extent maps. Creating one checks free
space first and refuses before any file exists when the disks' data cannot
fit, counting what unfinished sessions will still write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import Executor
from pathlib import Path

from converters.extents import ExtentMap, ExtentMapError

from . import storage
from .diskio import DiskIO
from .errors import BadRequest, Conflict, NotFound, StorageFull
from .journal import JournalError
from .protocol import BODY_SLACK, MAX_CHUNK, valid_name
from .storage import DiskRecord, SessionDir, SessionRecord

log = logging.getLogger(__name__)

# Request bodies a session may hold at once (each up to 8 MiB, decoded into
# at most 8 MiB more): bounds the server's memory per session whatever the
# client sends, and gives every session the same share of storage I/O.
MAX_INFLIGHT = 6  # the Python client's senders; 6 x 16 MiB = 96 MiB
BODY_SIZE = MAX_CHUNK + BODY_SLACK
# One buffer holds a request's body and, after it, room for the body
# decoded (a zstd body is decoded there, not into a fresh allocation).
BUFFER_SIZE = BODY_SIZE + MAX_CHUNK
MAX_DISKS = 64


class Session:
    def __init__(self, sdir: SessionDir, record: SessionRecord, executor: Executor):
        self.sdir = sdir
        self.record = record
        self.name = record.name
        self.log = _session_logger(sdir)
        self.buffers = BufferPool(MAX_INFLIGHT, BUFFER_SIZE)
        self._save_lock = threading.Lock()
        self.disks = {
            d.name: DiskIO(sdir, d, executor, self.log, self.save) for d in record.disks
        }

    def disk(self, name: str) -> DiskIO:
        try:
            return self.disks[name]
        except KeyError:
            raise NotFound(what=f"disk {name} in session {self.name}") from None

    def save(self) -> None:
        # Called from worker threads too (a write that hit ENOSPC).
        with self._save_lock:
            self.sdir.save_record(self.record)

    def status(self) -> dict:
        return {
            "name": self.name,
            "created_at": self.record.created_at,
            "complete": self.record.complete,
            "disks": [d.status() for d in self.disks.values()],
        }

    async def close_idle(self, max_idle: float) -> None:
        now = time.monotonic()
        idle = [d for d in self.disks.values() if now - d.last_used > max_idle]
        for disk in idle:
            await disk.close()
        if len(idle) == len(self.disks):
            self.buffers.trim()

    async def close(self) -> None:
        for disk in self.disks.values():
            await disk.close()
        for handler in list(self.log.handlers):
            self.log.removeHandler(handler)
            handler.close()


class BufferPool:
    """At most ``count`` request buffers, made on first use and then reused:
    a fresh 8 MiB buffer per request costs a memset and 2048 page faults,
    more than the copy into it on a small machine."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._slots = asyncio.Semaphore(count)
        self._free: list[bytearray] = []

    @contextlib.asynccontextmanager
    async def get(self):
        async with self._slots:
            buf = self._free.pop() if self._free else bytearray(self.size)
            try:
                yield buf
            finally:
                self._free.append(buf)

    def trim(self) -> None:
        """Give the memory of an idle session back."""
        self._free.clear()


class Registry:
    def __init__(self, root: Path, executor: Executor) -> None:
        self.root = Path(root)
        self._executor = executor
        self.sessions: dict[str, Session] = {}
        self._lock = asyncio.Lock()

    def load_all(self) -> None:
        for path in sorted(self.root.iterdir()):
            sdir = SessionDir(path)
            if not (valid_name(path.name) and sdir.exists()):
                continue
            try:
                record = sdir.load_record()
                self.sessions[record.name] = Session(sdir, record, self._executor)
            except (OSError, ValueError, KeyError, TypeError, JournalError) as e:
                # One damaged session must not keep the others from resuming.
                log.error("LOAD failed session=%s error=%s", path.name, e)
                continue
            log.info("LOAD session=%s disks=%d", record.name, len(record.disks))

    def get(self, name: str) -> Session:
        try:
            return self.sessions[name]
        except KeyError:
            raise NotFound(what=f"session {name}") from None

    async def open(self, name: str, body: dict, peer: str) -> tuple[Session, bool]:
        """The session ``name``: created, or found again for a resume."""
        if not valid_name(name):
            raise BadRequest(reason=f"bad session name {name!r}")
        disks, maps, inventory = _parse_request(body)
        async with self._lock:
            session = self.sessions.get(name)
            if session is not None:
                await asyncio.to_thread(_resume, session, disks, maps, inventory)
                session.log.info("RESUME session=%s peer=%s", name, peer)
                return session, False
            self._check_space(disks)
            sdir = SessionDir(self.root / name)
            record = SessionRecord(name, disks, peer=peer)
            await asyncio.to_thread(_create, sdir, record, maps, inventory)
            session = Session(sdir, record, self._executor)
            self.sessions[name] = session
            session.log.info(
                "CREATE session=%s peer=%s disks=%s data_bytes=%d",
                name,
                peer,
                ",".join(d.name for d in disks),
                sum(d.data_bytes for d in disks),
            )
            return session, True

    def reserved(self) -> int:
        """Bytes unfinished disks may still write."""
        return sum(
            storage.space_needed(d, s.sdir.allocated(d.name))
            for s in self.sessions.values()
            for d in s.record.disks
            if not d.complete
        )

    def _check_space(self, disks: list[DiskRecord]) -> None:
        needed = sum(storage.space_needed(d) for d in disks)
        free = storage.free_bytes(self.root)
        reserved = self.reserved()
        available = free - reserved - storage.MARGIN
        if needed > available:
            raise StorageFull(
                reason=f"the disks need {_gib(needed)} for their data but "
                f"{self.root} has {_gib(free)} free ({_gib(reserved)} of it "
                "promised to unfinished sessions)",
                needed=needed,
                available=max(0, available),
            )

    async def close_all(self) -> None:
        for session in self.sessions.values():
            await session.close()


def _parse_request(body: dict) -> tuple[list[DiskRecord], dict, dict]:
    if not isinstance(body, dict) or not isinstance(body.get("disks"), list):
        raise BadRequest(reason="expected {'inventory': {...}, 'disks': [...]}")
    inventory = body.get("inventory") or {}
    if not isinstance(inventory, dict):
        raise BadRequest(reason="inventory must be an object")
    if not 0 < len(body["disks"]) <= MAX_DISKS:
        raise BadRequest(reason=f"a session has 1 to {MAX_DISKS} disks")
    disks: list[DiskRecord] = []
    maps: dict[str, ExtentMap] = {}
    for item in body["disks"]:
        try:
            name, size = str(item["name"]), int(item["size"])
            emap = ExtentMap.from_json(item["map"])
        except (KeyError, TypeError, ValueError, ExtentMapError) as e:
            raise BadRequest(reason=f"bad disk entry: {e}") from None
        if not valid_name(name) or name in maps:
            raise BadRequest(reason=f"bad or repeated disk name {name!r}")
        if emap.size != size or size <= 0:
            raise BadRequest(reason=f"disk {name}: map size {emap.size} != {size}")
        disks.append(DiskRecord.for_map(name, emap))
        maps[name] = emap
    return disks, maps, inventory


def _create(sdir: SessionDir, record: SessionRecord, maps, inventory) -> None:
    sdir.create()
    sdir.save_inventory(inventory)
    for name, emap in maps.items():
        sdir.save_map(name, emap)
    # session.json last: a directory without it is not a session yet.
    sdir.save_record(record)


def _resume(session: Session, disks: list[DiskRecord], maps, inventory) -> None:
    old = {d.name: d for d in session.record.disks}
    if sorted(old) != sorted(d.name for d in disks) or any(
        old[d.name].size != d.size for d in disks
    ):
        raise Conflict(
            reason=f"session {session.name} exists with other disks; "
            "pick another session name"
        )
    for disk in disks:
        # A map computed again after a reboot of the live side may differ
        # (it never marks SKIP what it cannot prove unused); the source is
        # the same, so what was committed stays valid.
        rec, new = old[disk.name], maps[disk.name].normalized()
        if rec.complete:
            continue  # done by the map it had; a complete image stays so
        if session.sdir.load_map(disk.name).normalized() != new:
            session.sdir.save_map(disk.name, new)
            rec.data_bytes, rec.zero_bytes = disk.data_bytes, disk.zero_bytes
            rec.skip_bytes = disk.skip_bytes
            session.log.info(
                "MAP replaced disk=%s data_bytes=%d", disk.name, rec.data_bytes
            )
    if inventory:
        session.sdir.save_inventory(inventory)
    session.save()


def _session_logger(sdir: SessionDir) -> logging.Logger:
    logger = logging.getLogger(f"converters.wire.session.{sdir.name}")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.FileHandler(sdir.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
