"""One disk being received: its backend, its journal, its commit loop.

A write is acknowledged once the backend has it. Every ``FLUSH_INTERVAL`` the
disk flushes the backend and then journals what was written before that
flush: group commit, so a transfer pays one fdatasync a second instead of one
per request, and the journal never lists a range the image could lose.

Clients are told ``committed | flushing | pending`` as done: if the server
dies before the flush, those ranges vanish from the answer it gives after the
restart and the client sends them again. Only the journal decides that a disk
is complete.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from converters import backends
from converters.extents import ExtentKind

from . import protocol
from .errors import Conflict, Incomplete, StorageFull, WireError
from .journal import Journal
from .ranges import RangeSet
from .storage import DiskRecord, SessionDir

log = logging.getLogger(__name__)

# One second bounds what a server crash costs the client (at most a second
# of data re-sent) at one fdatasync per second of transfer.
FLUSH_INTERVAL = 1.0
# qemu-nbd connections per disk: requests of one disk in flight at once
# (as many as a session takes, sessions.MAX_INFLIGHT).
CONNECTIONS = 6


class DiskIO:
    def __init__(
        self,
        sdir: SessionDir,
        record: DiskRecord,
        executor: Executor,
        slog: logging.Logger,
        on_change: Callable[[], None],
    ) -> None:
        self.sdir = sdir
        self.record = record
        self.name = record.name
        self._executor = executor
        self._log = slog
        self._on_change = on_change  # saves session.json
        self._journal = Journal(sdir.journal(self.name))
        self.committed = self._journal.load()
        self.pending = RangeSet()
        self.flushing = RangeSet()
        # Requests received in full and being written: a client that lost
        # its link waits for these rather than sending them again.
        self.inflight: list[tuple[int, int]] = []
        self._backend = None
        self._open_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task | None = None
        self.last_used = time.monotonic()
        # Counters since this server started; RESENT lines in serve.log keep
        # the same fact across restarts.
        self.received = 0
        self.resent = 0
        self.rejected = 0

    # What clients see

    def known(self) -> RangeSet:
        return self.committed.union(self.flushing, self.pending)

    def status(self) -> dict:
        return {
            "name": self.name,
            "size": self.record.size,
            "complete": self.record.complete,
            "error": self.record.error,
            "data_bytes": self.record.data_bytes,
            "zero_bytes": self.record.zero_bytes,
            "skip_bytes": self.record.skip_bytes,
            "committed": self.known().to_json(),
            "inflight": [[s, e - s] for s, e in self.inflight],
            "durable_bytes": self.committed.total,
            "received_bytes": self.received,
            "resent_bytes": self.resent,
            "rejected_requests": self.rejected,
        }

    # Operations

    async def write(
        self, offset: int, length: int, body, encoding: str, digest: str, out=None
    ) -> None:
        """``body`` holds ``length`` disk bytes, coded as ``encoding``;
        ``out``, if given, is where a compressed body is decoded."""
        self._check_open_for_writes()
        protocol.check_bounds(offset, length, self.record.size)
        backend = await self._get_backend()
        args = (backend, offset, length, body, encoding, digest, out)
        span = (offset, offset + length)
        self.inflight.append(span)
        try:
            await self._run(self._verify_write, *args)
        except WireError as e:
            self.rejected += 1
            self._log.warning(
                "REJECT disk=%s offset=%d reason=%s", self.name, offset, e.code
            )
            raise
        finally:
            self.inflight.remove(span)
        self._account(offset, length)

    def _verify_write(self, backend, offset, length, body, encoding, digest, out):
        # Runs in a worker thread: zstd, the hash and libnbd release the GIL.
        data = protocol.decode(body, encoding, length, out)
        protocol.verify(data, digest, offset)
        self._storage_op(backend.write, offset, data)

    async def zero(self, offset: int, length: int) -> None:
        self._check_open_for_writes()
        protocol.check_bounds(offset, length, self.record.size)
        backend = await self._get_backend()
        span = (offset, offset + length)
        self.inflight.append(span)
        try:
            await self._run(self._storage_op, backend.zero, offset, length)
        finally:
            self.inflight.remove(span)
        self._account(offset, length)

    async def read(self, offset: int, length: int) -> bytes:
        protocol.check_bounds(offset, length, self.record.size)
        backend = await self._get_backend()
        return await self._run(backend.read, offset, length)

    async def extents(self):
        backend = await self._get_backend()
        return await self._run(backend.extents)

    async def flush(self) -> None:
        """Make everything acknowledged so far durable and journaled."""
        async with self._flush_lock:
            if not self.pending or self._backend is None:
                return
            batch, self.pending = self.pending, RangeSet()
            self.flushing = batch
            try:
                await self._run(self._storage_op, self._backend.flush)
                await self._run(self._journal.append, list(batch))
            except BaseException:
                # Not durable: forget the batch; the client re-sends it.
                self.flushing = RangeSet()
                raise
            self.committed.update(batch)
            self.flushing = RangeSet()
            self._log.info(
                "COMMIT disk=%s ranges=%d bytes=%d durable=%d",
                self.name,
                len(batch),
                batch.total,
                self.committed.total,
            )

    async def complete(self) -> None:
        """Declare the image done, only if the journal covers its map."""
        if self.record.complete:
            return
        await self.flush()
        emap = await self._run(self.sdir.load_map, self.name)
        missing = 0
        for ext in emap:
            if ext.kind is not ExtentKind.SKIP:
                missing += sum(
                    e - s for s, e in self.committed.missing(ext.offset, ext.end)
                )
        if missing:
            raise Incomplete(disk=self.name, missing=missing)
        self.record.complete = True
        self.record.completed_at = time.time()
        self.record.error = None
        await self._run(self._on_change)
        self._log.info("COMPLETE disk=%s size=%d", self.name, self.record.size)
        await self.close()

    async def close(self) -> None:
        """Flush, journal and end qemu-nbd (idle disks, shutdown)."""
        if self._flusher:
            self._flusher.cancel()
            self._flusher = None
        async with self._open_lock:
            if self._backend is None:
                return
            try:
                await self.flush()
            except (OSError, WireError) as e:
                self._log.warning("FLUSH failed disk=%s error=%s", self.name, e)
            backend, self._backend = self._backend, None
            await self._run(backend.close)
            self._journal.close()

    # Internals

    def _check_open_for_writes(self) -> None:
        self.last_used = time.monotonic()
        if self.record.complete:
            raise Conflict(reason=f"disk {self.name} is complete")

    def _account(self, offset: int, length: int) -> None:
        end = offset + length
        again = self.known().overlap(offset, end)
        if again:
            # A committed range sent again: the client should have asked.
            self.resent += again
            self._log.warning(
                "RESENT disk=%s offset=%d length=%d", self.name, offset, again
            )
        self.received += length
        self.pending.add(offset, end)

    def _storage_op(self, func, *args):
        try:
            return func(*args)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self._mark_error(f"storage full writing {self.name}")
                raise StorageFull(
                    reason=f"no space left in {self.sdir.root.parent} for "
                    f"disk {self.name}; the image is incomplete, free space "
                    "and resume"
                ) from e
            raise

    def _mark_error(self, message: str) -> None:
        if self.record.error != message:
            self.record.error = message
            self._log.error("ERROR disk=%s error=%s", self.name, message)
            try:
                self._on_change()
            except OSError as e:
                # Full storage may not take session.json either; it already
                # says incomplete, which is what matters.
                self._log.warning("SAVE failed disk=%s error=%s", self.name, e)

    async def _get_backend(self):
        self.last_used = time.monotonic()
        if self._backend is not None:
            return self._backend
        async with self._open_lock:
            if self._backend is None:
                self._backend = await self._run(self._open_backend)
                self._flusher = asyncio.get_running_loop().create_task(
                    self._flush_loop()
                )
        return self._backend

    def _open_backend(self):
        image = self.sdir.image(self.name)
        if not image.exists():
            backends.create(f"qcow2://{image}", self.record.size)
        mode = "r" if self.record.complete else "r+"
        return backends.open(f"qcow2://{image}", mode, connections=CONNECTIONS)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except (OSError, WireError) as e:
                self._log.warning("FLUSH failed disk=%s error=%s", self.name, e)

    async def _run(self, func, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)
