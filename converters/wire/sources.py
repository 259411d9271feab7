"""What the uploader reads: disks, their maps, and the requests cut from
them.

Requests are cut at multiples of the request size (DATA) or of ``MAX_ZERO``
(ZERO), minus what the server already has, so that every run of every client
sends the same ranges and the receiver's journal merges them into few.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from converters.extents import ExtentKind, ExtentMap

from .errors import TransferError
from .progress import DiskStats, Meter
from .protocol import MAX_ZERO
from .ranges import RangeSet


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

    def __init__(self, source: DiskSource, stats: DiskStats, meter: Meter):
        self.source = source
        self.name = source.name
        self.emap = source.extents
        self.stats = stats
        self.meter = meter
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


def read_into(job: Job, view: memoryview, offset: int) -> memoryview:
    pos = 0
    while pos < len(view):
        n = os.preadv(job.fd, [view[pos:]], offset + pos)
        if n == 0:
            raise TransferError(
                reason=f"{job.source.path} ends at {offset + pos}, before its "
                f"map ({job.emap.size} bytes)"
            )
        pos += n
    return view


def interleave(iterators: list[Iterator[Item]]) -> Iterator[Item]:
    """One item of each disk in turn, so that all disks move together."""
    live = list(iterators)
    while live:
        for it in list(live):
            try:
                yield next(it)
            except StopIteration:
                live.remove(it)
