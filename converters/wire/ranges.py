"""Sets of byte ranges: what a receiver has committed, what is left to send.

Kept as sorted, disjoint, non-touching ``[start, end)`` pairs in two parallel
lists so that lookups bisect. Requests line up on chunk boundaries
(``ExtentMap.split``), so a disk's committed set collapses into few ranges
however many requests built it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class RangeSet:
    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # First range that ends at or after start (may touch) and last range
        # that starts at or before end: everything between merges.
        lo = bisect.bisect_left(self._ends, start)
        hi = bisect.bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def update(self, other: RangeSet) -> None:
        for start, end in other:
            self.add(start, end)

    def discard(self, start: int, end: int) -> None:
        if end <= start:
            return
        lo = bisect.bisect_right(self._ends, start)
        hi = bisect.bisect_left(self._starts, end)
        if lo >= hi:
            return
        pieces: list[tuple[int, int]] = []
        if self._starts[lo] < start:
            pieces.append((self._starts[lo], start))
        if self._ends[hi - 1] > end:
            pieces.append((end, self._ends[hi - 1]))
        self._starts[lo:hi] = [s for s, _ in pieces]
        self._ends[lo:hi] = [e for _, e in pieces]

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Ranges of the set that share at least one byte with the range."""
        i = bisect.bisect_right(self._ends, start)
        while i < len(self._starts) and self._starts[i] < end:
            yield self._starts[i], self._ends[i]
            i += 1

    def covers(self, start: int, end: int) -> bool:
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def overlap(self, start: int, end: int) -> int:
        """How many bytes of the range the set holds."""
        return sum(min(e, end) - max(s, start) for s, e in self.overlapping(start, end))

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the range the set does not hold."""
        out: list[tuple[int, int]] = []
        pos = start
        for s, e in self.overlapping(start, end):
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            out.append((pos, end))
        return out

    def copy(self) -> RangeSet:
        new = RangeSet()
        new._starts = list(self._starts)
        new._ends = list(self._ends)
        return new

    def union(self, *others: RangeSet) -> RangeSet:
        new = self.copy()
        for other in others:
            new.update(other)
        return new

    @property
    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def to_json(self) -> list[list[int]]:
        """``[[offset, length], ...]``, the form docs/protocol.md gives."""
        return [[s, e - s] for s, e in self]

    @classmethod
    def from_json(cls, obj: list) -> RangeSet:
        return cls((int(o), int(o) + int(n)) for o, n in obj)
