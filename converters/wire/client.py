"""The sending side of the wire: extent-driven upload of disks to ``ferry
serve`` (P2V capture, and later import and live capture).

Per disk, the extent map says what to send: DATA is read and sent in 8 MiB
requests (or as zero requests when it reads as zeros), ZERO becomes zero
requests, SKIP is never read. A feeder hands the requests of all disks, in
turns, to a bounded queue; two readers fill a fixed set of buffers with the
source's bytes ahead of need and checksum and compress them (when it pays,
protocol.Encoder); a few senders, each with its own connection, send them;
the first error is raised when the block ends.

Resume: before each round the client asks the server what it has and sends
only the rest; after a link failure a worker asks again before re-sending.
A disk is done when the server, checking its own journal, says complete.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from converters.events import EventStream
from converters.extents import ExtentKind

from .connection import WireClient
from .errors import (
    BadRequest,
    ChecksumMismatch,
    Incomplete,
    LinkDown,
    TransferError,
)
from .pairing import Pairing
from .progress import DiskStats, Meter
from .protocol import (
    CHUNK_SIZE,
    MAX_CHUNK,
    Encoder,
    Payload,
    bound_heap,
    is_zero,
    valid_name,
)
from .retry import Backoff, retry_call
from .sources import DiskSource, Item, Job, interleave, read_buffer, read_into
from .throttle import TokenBucket

log = logging.getLogger(__name__)

# Each round sends what the server lacks; a second round happens only when
# the server lost unflushed writes in a restart. More rounds than this means
# something keeps losing data: stop and say so.
MAX_ROUNDS = 8
# A chunk refused for a checksum mismatch is read and sent again this often
# before the disk is given up (a source that changes under us, bad RAM).
MAX_REJECTS = 3
# Threads reading and encoding the source ahead of the senders: three keep
# a device busy (an O_DIRECT read in flight while another's buffer is
# handed over) and two cores compressing while one of them reads (traced:
# two readers spent the text part of the bench disk compressing, the link
# waiting on them); each costs one 8 MiB buffer beyond the senders' own,
# plus one more buffer so that an encoded request is ready when a sender
# frees.
READERS = 3
READY_AHEAD = 1


@dataclass
class UploadOptions:
    compress: str = "auto"  # auto | zstd | none
    bandwidth: float | None = None  # bytes per second, None: unlimited
    # Eight requests in flight, two more than the server takes per session
    # (sessions.MAX_INFLIGHT): the server's storage write is the longest
    # step of a request (150-250 ms per 8 MiB through qemu-nbd here, traced
    # in a capture of the bench disk) and holds its connection until the
    # reply; the two extra bodies wait in the socket buffers meanwhile, so
    # a server buffer that frees finds its next body already arriving
    # instead of the link idling for a round trip. Each costs 8 MiB (a read
    # buffer) plus its zstd output.
    workers: int = 8
    chunk_size: int = CHUNK_SIZE
    # Give up when the server stays unreachable this long (a reboot of the
    # KVM host fits in it).
    retry_timeout: float = 600.0
    # O_DIRECT reads (falls back where refused): None reads block devices
    # so (no page-cache copy, and a live system running from RAM keeps its
    # memory), files through the page cache.
    direct: bool | None = None
    # Set by the caller (the TUI's cancel) to stop the upload between chunks.
    cancel: threading.Event | None = None


@dataclass
class UploadResult:
    session: str
    disks: dict[str, DiskStats] = field(default_factory=dict)
    seconds: float = 0.0


def upload(
    server: Pairing | str,
    session: str,
    disks: Sequence[DiskSource],
    *,
    inventory: dict | None = None,
    options: UploadOptions | None = None,
    events: EventStream | None = None,
) -> UploadResult:
    """Send ``disks`` into session ``session`` on ``server``; resumes the
    session when it exists. Returns the byte counters per disk."""
    pairing = server if isinstance(server, Pairing) else Pairing.parse(server)
    bound_heap()
    uploader = _Uploader(pairing, session, disks, options or UploadOptions(), events)
    return uploader.run(inventory or {})


class _Uploader:
    def __init__(self, pairing, session, disks, options, events):
        if not 0 < options.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK}")
        for name in [session, *(d.name for d in disks)]:
            if not valid_name(name):
                raise BadRequest(
                    reason=f"{name!r} is not a valid name: use letters, "
                    "digits, '.', '_' and '-', at most 64"
                )
        self.pairing = pairing
        self.session = session
        self.sources = list(disks)
        self.options = options
        self.events = events or EventStream()
        self.throttle = TokenBucket(options.bandwidth) if options.bandwidth else None
        self.result = UploadResult(session)

    def run(self, inventory: dict) -> UploadResult:
        started = time.monotonic()
        control = WireClient(self.pairing)
        jobs: list[Job] = []
        try:
            maps = {s.name: s.extents for s in self.sources}
            self.events.step("session", f"{self.session} on {self.pairing.address}")
            reply = self._retry(
                lambda: control.open_session(self.session, inventory, maps)
            )
            done = {d["name"] for d in reply["disks"] if d["complete"]}
            for source in self.sources:
                stats = _stats_for(source)
                self.result.disks[source.name] = stats
                stats.complete = source.name in done
                if not stats.complete:
                    meter = Meter(stats, self.events)
                    jobs.append(Job(source, stats, meter, self.options.direct))
            self._rounds(control, jobs)
        finally:
            control.close()
            for job in jobs:
                job.close()
            self.result.seconds = time.monotonic() - started
        return self.result

    def _rounds(self, control: WireClient, jobs: list[Job]) -> None:
        for _ in range(MAX_ROUNDS):
            todo = [j for j in jobs if not j.stats.complete]
            if not todo:
                return
            for job in todo:
                status = self._retry(
                    lambda j=job: control.disk_status(self.session, j.name)
                )
                job.committed = status.committed
                job.stats.rounds += 1
                if job.stats.rounds == 1:
                    job.stats.committed_before = status.committed.total
                job.meter.start(job.data_done())
            self._pump(todo)
            for job in todo:
                self._finish(control, job)
        missing = ", ".join(j.name for j in jobs if not j.stats.complete)
        if missing:
            raise TransferError(
                reason=f"{missing} still incomplete after {MAX_ROUNDS} rounds"
            )

    def _retry(self, func):
        return retry_call(func, self.options.retry_timeout, self.events)

    def _finish(self, control: WireClient, job: Job) -> None:
        self._retry(lambda: control.flush(self.session, job.name))
        try:
            self._retry(lambda: control.complete(self.session, job.name))
        except Incomplete as e:
            # The server restarted before journaling some acknowledged
            # writes: the next round sends them again.
            self.events.log(f"{job.name}: {e}; sending the rest", "warning")
            return
        job.stats.complete = True
        job.meter.emit(force=True)
        self.events.log(f"{job.name}: complete on {self.pairing.address}")

    def _pump(self, jobs: list[Job]) -> None:
        """Three stages: this thread cuts requests, readers fill buffers
        with the source's bytes ahead of need and encode them, senders send.
        Reading and compressing then overlap the senders' waits on the
        network and the server (with O_DIRECT there is no kernel read-ahead
        to do it); when senders compressed, all of them compressed at once
        and then all sent at once (traced at load 7: 7 of 8 compressing, the
        link idle). A fixed set of buffers bounds the memory whatever the
        stages' speeds."""
        opts = self.options
        todo: queue.Queue = queue.Queue(maxsize=opts.workers * 2)
        ready: queue.Queue = queue.Queue()  # bounded by the buffers
        free: queue.Queue = queue.Queue()
        for _ in range(opts.workers + READERS + READY_AHEAD):
            free.put(read_buffer(opts.chunk_size))
        stop = threading.Event()
        failures: list[BaseException] = []
        readers = [
            threading.Thread(
                target=self._reader,
                args=(todo, ready, free, stop, failures),
                name=f"ferry-read-{i}",
            )
            for i in range(READERS)
        ]
        senders = [
            threading.Thread(
                target=self._worker,
                args=(ready, free, stop, failures),
                name=f"ferry-send-{i}",
            )
            for i in range(opts.workers)
        ]
        for t in readers + senders:
            t.start()
        try:
            fronts = [f for j in jobs for f in two_fronts(j, opts.chunk_size)]
            for item in interleave(fronts):
                while not stop.is_set():
                    try:
                        todo.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    break
        except BaseException:
            stop.set()
            raise
        finally:
            for _ in readers:
                todo.put(None)
            for t in readers:
                t.join()
            for _ in senders:
                ready.put(None)
            for t in senders:
                t.join()
        if failures:
            raise failures[0]

    def _reader(self, todo, ready, free, stop, failures) -> None:
        # A zstd context per thread: they are not shareable.
        encoder = Encoder(self.options.compress)
        while (item := todo.get()) is not None:
            if stop.is_set():
                continue  # drain, so that the feeder never blocks
            if item.kind is not ExtentKind.DATA:
                ready.put(_Ready(item))
                continue
            buf = free.get()
            try:
                view = read_into(item.job, buf, item.offset, item.length)
                payload = None if is_zero(view) else encode_payload(encoder, view)
            except BaseException as e:
                free.put(buf)
                failures.append(e)
                stop.set()
                continue
            ready.put(_Ready(item, buf, view, payload, encoder))

    def _worker(self, ready, free, stop, failures) -> None:
        client = WireClient(self.pairing)
        # Only for encoding again after a checksum mismatch; the readers'
        # encoders belong to their threads.
        encoder = Encoder(self.options.compress)
        try:
            while (got := ready.get()) is not None:
                try:
                    if not stop.is_set():
                        self._send(client, encoder, got)
                except BaseException as e:
                    failures.append(e)
                    stop.set()
                finally:
                    if got.buf is not None:
                        free.put(got.buf)  # also when stopping: a reader may wait
        finally:
            client.close()

    def _send(self, client: WireClient, encoder: Encoder, got: _Ready):
        item = got.item
        backoff = Backoff(self.options.retry_timeout)
        after_failure = False
        rejects = 0
        while True:
            if self.options.cancel is not None and self.options.cancel.is_set():
                raise TransferError(reason="cancelled")
            try:
                if after_failure and self._server_has(client, item):
                    item.job.meter.add(_data(item), found_after_retry=_data(item))
                    return
                self._attempt(client, got, after_failure)
                return
            except LinkDown as e:
                item.job.meter.add(link_failures=1)
                backoff.wait(e, self.events)
                after_failure = True
            except ChecksumMismatch as e:
                rejects += 1
                item.job.meter.add(rejected=1)
                if rejects > MAX_REJECTS:
                    raise TransferError(reason=f"{item.job.name}: {e}") from e
                log.warning("REJECTED disk=%s offset=%d", item.job.name, item.offset)
                # Read again: the source may have changed, or memory erred.
                got.view = read_into(item.job, got.buf, item.offset, item.length)
                got.payload = (
                    None if is_zero(got.view) else encode_payload(encoder, got.view)
                )
                got.encoder = encoder

    def _server_has(self, client: WireClient, item: Item) -> bool:
        """After a link failure: did the request get through anyway? Waits
        for the server to finish writing what it received."""
        for _ in range(50):
            status = client.disk_status(self.session, item.job.name)
            if not status.inflight.overlap(item.offset, item.end):
                return status.committed.covers(item.offset, item.end)
            time.sleep(0.1)
        return False

    def _attempt(self, client, got: _Ready, again: bool) -> None:
        """One try at one request; a DATA item comes with its bytes and
        their payload (None: they read as zeros)."""
        item, payload = got.item, got.payload
        job, session = item.job, self.session
        resent = item.length if again else 0
        if item.kind is ExtentKind.ZERO:
            client.zero(session, job.name, item.offset, item.length)
            job.meter.add(zeroed=item.length, resent=resent)
            return
        if payload is None:
            client.zero(session, job.name, item.offset, item.length)
            job.meter.add(item.length, zero_detected=item.length, resent=resent)
            return
        body = self.throttle.slices(payload.body) if self.throttle else None
        started = time.perf_counter()
        client.put(session, job.name, item.offset, payload, body)
        # Plain float updates: a reader's encoder told from a sender thread.
        got.encoder.sent(len(payload.body), time.perf_counter() - started)
        job.meter.add(
            item.length,
            data_sent=item.length,
            wire_bytes=len(payload.body),
            saved=payload.saved,
            resent=resent,
        )


def two_fronts(job: Job, chunk: int) -> list[Iterator[Item]]:
    """A disk's requests from two places in turn: the first half of what
    is left to send and the second half.

    Compressible stretches (text, binaries) cost CPU and little link;
    incompressible ones (media, encrypted, compressed files) the reverse.
    Sent in disk order, a disk laid out as large stretches of either kind
    leaves the link idle during the first and the CPU idle during the
    second (traced on the bench disk, machine idle: the text half took
    4.8 s CPU-bound for 1.8 s of link time, then the random half ran
    link-bound with three quarters of the CPU idle); two fronts mix them.
    Each front stays sequential, so a disk's read-ahead still works; a
    spinning disk pays a seek per request (8 MiB), a few percent."""
    left = [
        (s, e)
        for ext in job.emap.of_kind(ExtentKind.DATA)
        for s, e in job.committed.missing(ext.offset, ext.end)
    ]
    half = sum(e - s for s, e in left) // 2
    mid = None
    for s, e in left:
        if half < e - s:
            mid = s + half
            break
        half -= e - s
    if mid is None or mid < chunk:
        return [job.items(chunk)]
    mid -= mid % chunk  # requests stay cut at multiples of the chunk
    first = (i for i in job.items(chunk) if i.offset < mid)
    second = (i for i in job.items(chunk) if i.offset >= mid)
    return [first, second]


@dataclass
class _Ready:
    """A request on its way from a reader to a sender."""

    item: Item
    buf: memoryview | None = None  # the read buffer, back to the pool after
    view: memoryview | None = None  # a DATA item's bytes, in ``buf``
    payload: Payload | None = None  # None: the bytes read as zeros
    encoder: Encoder | None = None  # who encoded it (told the send time)


def encode_payload(encoder: Encoder, data):
    """One request body (a seam for tests that corrupt payloads)."""
    return encoder.encode(data)


def _data(item: Item) -> int:
    return item.length if item.kind is ExtentKind.DATA else 0


def _stats_for(source: DiskSource) -> DiskStats:
    emap = source.extents
    return DiskStats(
        source.name,
        size=emap.size,
        data_total=emap.bytes_of(ExtentKind.DATA),
        skipped=emap.bytes_of(ExtentKind.SKIP) + emap.bytes_of(ExtentKind.ZERO),
    )
