"""Writing one image disk onto one target: allocated extents as data, the
rest zeroed, every written range read back and checked, the partition
tables last.

Order, so that an interrupted deploy never leaves a disk that looks
bootable but is not:

1. the first and last MiB of the target are zeroed (its old partition
   tables and their GPT backups go before anything else is touched);
2. the image's DATA extents outside those areas are read from the source and
   written (a range that reads as zeros is zeroed instead), its ZERO
   extents and the target's space past the image are zeroed; each chunk
   written is read back with direct I/O right away, by the worker that
   wrote it while the others fetch theirs, and its checksum (xxh3-128,
   sha256 without xxhash) compared with the one the server sent and the
   client checked on arrival; a chunk is journaled only once it passed;
3. only when every chunk passed, the image's first and last MiB (MBR/GPT
   and the GPT backup) are written and checked the same way.

A few workers each own a page-aligned 8 MiB buffer, a 1 MiB one for the
read-back and a source connection with its buffer for compressed bodies:
memory stays under ``workers * 3 * CHUNK_SIZE`` whatever the image's size,
and nothing is staged in RAM or on a disk.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from dataclasses import dataclass

from converters.deploy_plan import DeployError
from converters.deploy_target import Target, aligned_buffer
from converters.events import EventStream, Progress
from converters.extents import Extent, ExtentKind, ExtentMap
from converters.wire.protocol import CHUNK_SIZE, checksum, checksum_algorithm, is_zero
from converters.wire.sources import interleave

try:
    import xxhash
except ImportError:  # protocol then checksums with sha256 only
    xxhash = None

# The partition tables: MBR and the primary GPT in the first MiB (parted and
# every partitioner since 2010 start the first partition at 1 MiB), the GPT
# backup in the last 33 sectors of a disk.
HELD = 1 << 20
PROGRESS_INTERVAL = 0.5
# Read-back goes through a hash in steps of this size: one small buffer per
# worker instead of a second chunk-sized one.
READ_BACK = 1 << 20
# The digests protocol.checksum makes, computed step by step.
_HASHERS = {"sha256": hashlib.sha256}
if xxhash is not None:
    _HASHERS["xxh3-128"] = xxhash.xxh3_128


@dataclass
class WriteOptions:
    # Eight requests in flight: each worker's chunk spends most of its time
    # being compressed by the server, written or read back, so four left
    # the link idle (bench image, loopback: 4 workers 16.0 s, 6 14.9 s, 8
    # 14.5 s); each adds ~17 MiB of buffers.
    workers: int = 8
    chunk_size: int = CHUNK_SIZE
    # Parts of the disk written at once (_work_items).
    spans: int = 2
    verify: bool = True


@dataclass
class WriteStats:
    disk: str
    target: str
    image_size: int
    target_size: int
    data_bytes: int = 0  # written as data
    zero_detected: int = 0  # DATA that read as zeros: zeroed instead
    zeroed_bytes: int = 0  # ZERO extents and the target's space past the image
    verified_bytes: int = 0
    resumed_bytes: int = 0  # found in the journal of an earlier run
    seconds: float = 0.0
    link_failures: int = 0


@dataclass(frozen=True)
class _Written:
    offset: int
    length: int
    digest: str  # protocol.checksum's ALG:HEX (xxh3-128 where available)
    resumed: bool = False  # written by an earlier run (its journal says)


class _Progress:
    def __init__(self, stats: WriteStats, total: int, events: EventStream) -> None:
        self.stats = stats
        self.total = total
        self.events = events
        self.done = 0
        self.started = time.monotonic()
        self.last = 0.0
        self.lock = threading.Lock()

    def add(self, n: int, force: bool = False) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if not force and now - self.last < PROGRESS_INTERVAL:
                return
            self.last = now
            rate = self.done / max(now - self.started, 1e-6)
            self.events.emit(
                Progress(
                    self.stats.disk,
                    self.done,
                    self.total,
                    rate,
                    zero=self.stats.zeroed_bytes + self.stats.zero_detected,
                )
            )


def write_disk(
    source,
    target: Target,
    *,
    events: EventStream | None = None,
    options: WriteOptions | None = None,
    journal=None,
) -> WriteStats:
    """Copy ``source`` (see deploy_source) onto ``target``; raises
    DeployError when a range does not read back as written. With a
    ``journal`` (deploy_journal), chunks an earlier run wrote are not
    fetched again (but still verified)."""
    events = events or EventStream()
    options = options or WriteOptions()
    started = time.monotonic()
    size = source.size
    if target.size < size:
        raise DeployError(
            f"{target.path} holds {target.size} bytes, the image {size}: "
            "nothing was written"
        )
    stats = WriteStats(source.name, target.path, size, target.size)
    emap = source.extents()
    held = _held_ranges(size)
    body = emap.overlay_ranges(held, ExtentKind.SKIP)
    tables = emap.overlay_ranges(_complement(held, size), ExtentKind.SKIP)
    progress = _Progress(stats, emap.bytes_of(ExtentKind.DATA), events)

    events.step("wipe", f"old partition tables of {target.path}")
    for offset, length in _held_ranges(target.size):
        target.zero(offset, length)
    target.flush()

    what = f"{source.name} -> {target.path}"
    if options.verify:
        what += ", each chunk read back and checked as it is written"
    events.step("write", what)
    _pump(source, target, body, stats, progress, options, journal)
    if target.size > size:
        # Stale data past the image must not be readable by a grown
        # filesystem, nor an old GPT backup found by a partitioner.
        target.zero(size, target.size - size)
        stats.zeroed_bytes += target.size - size
    target.flush()

    events.step("partition table", f"{source.name} -> {target.path}")
    _pump(source, target, tables, stats, progress, options)
    target.flush()
    progress.add(0, force=True)
    stats.link_failures = getattr(source, "link_failures", 0)
    stats.seconds = time.monotonic() - started
    return stats


def _held_ranges(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the partition table areas of a disk."""
    head = min(HELD, size)
    tail_start = max(size - HELD, head)
    ranges = [(0, head)]
    if size > tail_start:
        ranges.append((tail_start, size - tail_start))
    return ranges


def _complement(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    for offset, length in ranges:
        if offset > pos:
            out.append((pos, offset - pos))
        pos = offset + length
    if pos < size:
        out.append((pos, size - pos))
    return out


def _pump(
    source, target, emap: ExtentMap, stats, progress, options, journal=None
) -> None:
    """Writes the DATA and ZERO extents of ``emap`` (SKIP is left alone),
    each DATA chunk checked by reading it back (``options.verify``).

    No flush on the way: the writes are O_DIRECT, so a flush only empties
    the disk's volatile cache, which nothing needs before the flushes
    around the partition tables (the journal lives in /run, which a power
    cut loses too). An earlier version flushed every 256 MiB while the bench's loop
    device wrote through its backing file's page cache; with it as direct
    as a disk, each such flush stalled every writer for 0.3-0.5 s (the
    loop device runs a flush before any request behind it): single runs
    took 14.9-17.3 s with it, 15.2-15.5 s without."""
    items: queue.Queue = queue.Queue(maxsize=options.workers * 2)
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def work() -> None:
        buf = aligned_buffer(options.chunk_size)
        # Read-back lands apart from what was written: a device that
        # returned nothing could not pass for one that returned the data.
        back = aligned_buffer(READ_BACK) if options.verify else None
        try:
            while True:
                ext = items.get()
                if ext is None or stop.is_set():
                    return
                done = _one(source, target, ext, buf, stats, lock, journal)
                if done is not None:
                    if back is not None:
                        _verify_one(target, done, back, stats, lock)
                    if journal is not None and not done.resumed:
                        journal.wrote(done.offset, done.length, done.digest)
                if ext.kind is ExtentKind.DATA:
                    progress.add(ext.length)
        except BaseException as e:
            failures.append(e)
            stop.set()

    threads = [
        threading.Thread(target=work, name=f"ferry-deploy-{i}", daemon=True)
        for i in range(options.workers)
    ]
    for t in threads:
        t.start()
    try:
        for ext in _work_items(emap, options.chunk_size, options.spans):
            while not stop.is_set():
                try:
                    items.put(ext, timeout=0.5)
                    break
                except queue.Full:
                    pass
            if stop.is_set():
                break
    finally:
        for _ in threads:
            while any(t.is_alive() for t in threads):
                try:
                    items.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if stop.is_set():
                        _drain(items)
        for t in threads:
            t.join()
    if failures:
        raise failures[0]


def _drain(items: queue.Queue) -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return


def _work_items(emap: ExtentMap, chunk: int, spans: int = 1):
    """The chunks to write, taken in turn from ``spans`` parts of the disk
    that hold as much data each. Disks keep alike data together (a text
    part compresses, a media part does not): in disk order the server's
    CPU is the limit for one part and the link for the next, taken in turn
    both stay busy. The chunks are the same whatever ``spans`` is, so a
    journal and the server's read sharing see the same ranges."""
    total = emap.bytes_of(ExtentKind.DATA)
    if spans <= 1 or total == 0:
        yield from _in_order(emap, chunk)
        return
    # The last part runs to the disk's end: ZERO extents after the last
    # data belong to it.
    bounds = [k * total // spans for k in range(spans)] + [None]
    yield from interleave(
        [_span(emap, chunk, bounds[k], bounds[k + 1]) for k in range(spans)]
    )


def _span(emap: ExtentMap, chunk: int, start: int, end: int | None):
    """The items whose data before them on the disk is in [start, end)."""
    before = 0
    for item in _in_order(emap, chunk):
        if end is not None and before >= end:
            return
        if before >= start:
            yield item
        if item.kind is ExtentKind.DATA:
            before += item.length


def _in_order(emap: ExtentMap, chunk: int):
    for ext in emap.extents:
        if ext.kind is ExtentKind.DATA:
            yield from ExtentMap(emap.size, [ext]).split(chunk)
        elif ext.kind is ExtentKind.ZERO:
            yield ext


def _one(source, target, ext: Extent, buf, stats, lock, journal) -> _Written | None:
    if journal is not None:
        digest = journal.has_data(ext.offset, ext.length)
        if digest is not None or journal.has_zero(ext.offset, ext.length):
            with lock:
                stats.resumed_bytes += ext.length
            return _Written(ext.offset, ext.length, digest, True) if digest else None
    if ext.kind is ExtentKind.ZERO:
        target.zero(ext.offset, ext.length)
        with lock:
            stats.zeroed_bytes += ext.length
        if journal is not None:
            journal.zero(ext.offset, ext.length)
        return None
    if hasattr(source, "read_into"):
        data, digest = source.read_into(ext.offset, ext.length, buf)
    else:
        data = source.read(ext.offset, ext.length)
        digest = ""
    if len(data) != ext.length:
        raise DeployError(f"{source.name}: short read at {ext.offset}")
    if is_zero(data):
        target.zero(ext.offset, ext.length)
        with lock:
            stats.zero_detected += ext.length
        if journal is not None:
            journal.zero(ext.offset, ext.length)
        return None
    target.write(ext.offset, data, buf)
    digest = digest or checksum(data)
    with lock:
        stats.data_bytes += ext.length
    return _Written(ext.offset, ext.length, digest)


def _verify_one(target: Target, w: _Written, buf, stats, lock) -> None:
    """Reads ``w`` back with direct I/O right after its write (or, resumed,
    as an earlier run left it), ``len(buf)`` bytes at a time into a hash:
    every chunk is checked before the partition tables are written, while
    later chunks are still on their way."""
    algorithm = checksum_algorithm(w.digest)
    hasher = _HASHERS[algorithm]()
    for offset in range(w.offset, w.offset + w.length, len(buf)):
        step = min(len(buf), w.offset + w.length - offset)
        hasher.update(target.read(offset, step, buf))
    if f"{algorithm}:{hasher.hexdigest()}" != w.digest:
        raise DeployError(
            f"{target.path}: {w.length} bytes at {w.offset} did not read "
            "back as written (failing disk or cable?); the partition "
            "table was not written, so the disk will not boot half-done"
        )
    with lock:
        stats.verified_bytes += w.length
