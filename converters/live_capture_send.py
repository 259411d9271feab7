"""Sending one round of a live capture: given byte ranges of disks, read
them and write them into the session, overwriting what the server has.

The wire client's ``upload`` sends what the server lacks and then declares
the disk complete; a live capture sends the same ranges again and again
(they changed) and completes only after the final round, so it drives the
same requests (``WireClient.put``/``zero``) itself: requests cut at 8 MiB
boundaries, zero detection, compression and checksums as ``upload`` does,
a few workers each with its own connection, retries after a dropped link.

The final round reads its blocks while the filesystems are frozen and
sends them after the thaw: ``snapshot`` holds them in memory (bounded by
``MAX_SNAPSHOT``), so the freeze does not wait for the link.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from converters.events import EventStream, Progress
from converters.wire.connection import WireClient
from converters.wire.pairing import Pairing
from converters.wire.protocol import CHUNK_SIZE, Encoder, is_zero
from converters.wire.ranges import RangeSet
from converters.wire.retry import retry_call
from converters.wire.throttle import TokenBucket

# O_DIRECT alignment: the largest logical sector size in use.
ALIGN = 4096
# A final round larger than this is sent while frozen rather than held in
# memory; the pre-copy policy keeps it far smaller (remaining / bandwidth
# under the downtime target: 35 MB at 1 Gbit/s and 0.3 s).
MAX_SNAPSHOT = 512 << 20


@dataclass(frozen=True)
class Chunk:
    disk: str
    offset: int
    length: int
    data: bytes | None = None  # read already (snapshot), else read when sent


@dataclass
class RoundStats:
    bytes: int = 0  # disk bytes covered (data and zeros)
    wire_bytes: int = 0
    zero_bytes: int = 0
    seconds: float = 0.0
    per_disk: dict[str, int] = field(default_factory=dict)

    @property
    def bandwidth(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def chunks(
    ranges: dict[str, RangeSet], sizes: dict[str, int], step: int = CHUNK_SIZE
) -> list[Chunk]:
    """Requests cut at multiples of ``step`` (as ``ExtentMap.split``), so the
    server's journal sees the boundaries every other client uses; ranges
    rounded out to ``ALIGN`` for O_DIRECT (extra bytes are current too)."""
    out = []
    for disk, rs in ranges.items():
        aligned = RangeSet()
        for start, end in rs:
            aligned.add(
                start - start % ALIGN, min(-(-end // ALIGN) * ALIGN, sizes[disk])
            )
        for start, end in aligned:
            pos = start
            while pos < end:
                cut = min(end, (pos // step + 1) * step)
                out.append(Chunk(disk, pos, cut - pos))
                pos = cut
    return out


def open_direct(path: str) -> int:
    """Reads that bypass the block device's page cache: a filesystem writes
    file data to the device without it, so pages cached by an earlier
    buffered read of the device go stale (seen here: a round re-reading a
    rewritten block got the old bytes back)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:  # a regular file on tmpfs: no page cache of its own
        return os.open(path, os.O_RDONLY)


def snapshot(
    paths: dict[str, str], ranges: dict[str, RangeSet], sizes: dict[str, int]
) -> list[Chunk]:
    """The bytes of ``ranges`` read now (under the freeze)."""
    out = []
    fds = {disk: open_direct(paths[disk]) for disk in ranges}
    buf = mmap.mmap(-1, CHUNK_SIZE)
    try:
        for c in chunks(ranges, sizes):
            data = bytes(_pread(fds[c.disk], c, buf))
            out.append(Chunk(c.disk, c.offset, c.length, data))
    finally:
        for fd in fds.values():
            os.close(fd)
        buf.close()
    return out


def _pread(fd: int, c: Chunk, buf: mmap.mmap) -> memoryview:
    """``c``'s bytes into ``buf`` (page-aligned, as O_DIRECT wants)."""
    view = memoryview(buf)[: c.length]
    pos = 0
    while pos < c.length:
        n = os.preadv(fd, [view[pos:]], c.offset + pos)
        if n <= 0:
            raise OSError(f"short read at {c.offset + pos} of {c.disk}")
        pos += n
    return view


class RoundSender:
    def __init__(
        self,
        pairing: Pairing,
        session: str,
        paths: dict[str, str],
        *,
        compress: str = "auto",
        bandwidth: float | None = None,
        workers: int = 4,
        retry_timeout: float = 600.0,
        events: EventStream | None = None,
    ) -> None:
        self.pairing = pairing
        self.session = session
        self.paths = paths
        self.compress = compress
        self.throttle = TokenBucket(bandwidth) if bandwidth else None
        self.workers = workers
        self.retry_timeout = retry_timeout
        self.events = events or EventStream()
        self._totals: dict[str, int] = {}

    def send(self, work: list[Chunk]) -> RoundStats:
        stats = RoundStats(per_disk={d: 0 for d in self.paths})
        self._totals = {d: 0 for d in self.paths}
        for c in work:
            self._totals[c.disk] += c.length
        started = time.monotonic()
        q: queue.Queue = queue.Queue()
        for c in work:
            q.put(c)
        failures: list[BaseException] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(
                target=self._worker,
                args=(q, stats, lock, failures),
                name=f"ferry-live-send-{i}",
            )
            for i in range(min(self.workers, max(1, len(work))))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats.seconds = time.monotonic() - started
        if failures:
            raise failures[0]
        return stats

    def flush(self) -> None:
        client = WireClient(self.pairing)
        try:
            for disk in self.paths:
                self._retry(lambda d=disk: client.flush(self.session, d))
        finally:
            client.close()

    def _retry(self, func):
        return retry_call(func, self.retry_timeout, self.events)

    def _worker(self, q, stats: RoundStats, lock, failures) -> None:
        client = WireClient(self.pairing)
        encoder = Encoder(self.compress)
        fds: dict[str, int] = {}
        buf = mmap.mmap(-1, CHUNK_SIZE)
        last_progress = 0.0
        try:
            while not failures:
                try:
                    c = q.get_nowait()
                except queue.Empty:
                    return
                if c.data is None:
                    if c.disk not in fds:
                        fds[c.disk] = open_direct(self.paths[c.disk])
                    data = _pread(fds[c.disk], c, buf)
                else:
                    data = c.data
                wire = self._send(client, encoder, c, data)
                with lock:
                    stats.bytes += c.length
                    stats.per_disk[c.disk] += c.length
                    stats.wire_bytes += wire
                    stats.zero_bytes += c.length if wire == 0 else 0
                    done = stats.per_disk[c.disk]
                now = time.monotonic()
                if now - last_progress > 0.5:
                    last_progress = now
                    self.events.emit(Progress(c.disk, done, self._totals[c.disk]))
        except BaseException as e:
            failures.append(e)
        finally:
            client.close()
            for fd in fds.values():
                os.close(fd)
            # buf is not closed: views of it may still be alive here (the
            # last payload); it goes with the thread.

    def _send(self, client: WireClient, encoder: Encoder, c: Chunk, data) -> int:
        """Bytes put on the wire (0 for a zero request)."""
        if is_zero(data):
            self._retry(lambda: client.zero(self.session, c.disk, c.offset, c.length))
            return 0
        payload = encoder.encode(data)

        def put():
            # a fresh iterator of slices per attempt: a retry resends it all
            body = self.throttle.slices(payload.body) if self.throttle else None
            client.put(self.session, c.disk, c.offset, payload, body)

        self._retry(put)
        return len(payload.body)
