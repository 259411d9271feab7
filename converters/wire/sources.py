"""What the uploader reads: disks, their maps, and the requests cut from
them.

Requests are cut at multiples of the request size (DATA) or of ``MAX_ZERO``
(ZERO), minus what the server already has, so that every run of every client
sends the same ranges and the receiver's journal merges them into few.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from converters.extents import ExtentKind, ExtentMap

from .errors import TransferError
from .progress import DiskStats, Meter
from .protocol import MAX_ZERO
from .ranges import RangeSet

# O_DIRECT alignment: the largest logical sector size in use.
ALIGN = 4096


@dataclass
class DiskSource:
    """One disk to send: a readable path and the map of what to send."""

    name: str
    path: str | os.PathLike
    extents: ExtentMap


@dataclass(frozen=True, slots=True)
class Item:
    """One request: a DATA chunk or a ZERO range of one disk."""

    job: Job
    offset: int
    length: int
    kind: ExtentKind

    @property
    def end(self) -> int:
        return self.offset + self.length


class Job:
    """One disk being sent: its open source, map, counters and what the
    server said it has at the start of the round."""

    def __init__(
        self,
        source: DiskSource,
        stats: DiskStats,
        meter: Meter,
        direct: bool | None = False,
    ):
        self.source = source
        self.name = source.name
        self.emap = source.extents
        self.stats = stats
        self.meter = meter
        self.direct = False
        if direct is None:
            direct = _is_block_device(source.path)
        if direct:
            try:
                self.fd = os.open(source.path, os.O_RDONLY | os.O_DIRECT)
                self.direct = True
            except OSError:  # tmpfs and some others have no O_DIRECT
                pass
        if not self.direct:
            self.fd = os.open(source.path, os.O_RDONLY)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.committed = RangeSet()

    def items(self, chunk: int) -> Iterator[Item]:
        """What the server lacks, cut at multiples of the request size so
        that every run of every client sends the same ranges."""
        for ext in self.emap:
            if ext.kind is ExtentKind.SKIP:
                continue
            step = chunk if ext.kind is ExtentKind.DATA else MAX_ZERO
            for start, end in self.committed.missing(ext.offset, ext.end):
                pos = start
                while pos < end:
                    cut = min(end, (pos // step + 1) * step)
                    yield Item(self, pos, cut - pos, ext.kind)
                    pos = cut

    def data_done(self) -> int:
        return sum(
            self.committed.overlap(e.offset, e.end)
            for e in self.emap.of_kind(ExtentKind.DATA)
        )

    def close(self) -> None:
        os.close(self.fd)


def _is_block_device(path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False  # the open that follows says why


def read_buffer(chunk_size: int) -> memoryview:
    """A worker's read buffer: page-aligned (an anonymous mmap) so that
    O_DIRECT reads land in it, with room to round a request out to
    ``ALIGN`` on both ends."""
    return memoryview(mmap.mmap(-1, chunk_size + 2 * ALIGN))


def read_into(job: Job, buf: memoryview, offset: int, length: int) -> memoryview:
    """``length`` bytes of the source at ``offset``, as a view into ``buf``.

    With O_DIRECT the read is rounded out to ``ALIGN`` (device sectors are
    512 or 4096 bytes) and the request's bytes are sliced from it: the data
    goes from the device to the buffer without a page-cache copy, and a
    live system running from RAM keeps its memory for itself."""
    start = offset - offset % ALIGN if job.direct else offset
    end = -(-(offset + length) // ALIGN) * ALIGN if job.direct else offset + length
    view = buf[: end - start]
    pos = 0
    while pos < len(view):
        n = os.preadv(job.fd, [view[pos:]], start + pos)
        if n == 0:
            break  # end of the source; rounding may ask past it
        pos += n
    if start + pos < offset + length:
        raise TransferError(
            reason=f"{job.source.path} ends at {start + pos}, before its "
            f"map ({job.emap.size} bytes)"
        )
    return view[offset - start : offset - start + length]


def interleave(iterators: list[Iterator[Item]]) -> Iterator[Item]:
    """One item of each iterator in turn: disks move together (capture),
    parts of one disk mix their kinds of data (deploy_write)."""
    live = list(iterators)
    while live:
        for it in list(live):
            try:
                yield next(it)
            except StopIteration:
                live.remove(it)
