"""Extent maps: what of a disk the transfer engine sends, and how.

A disk moves as an ordered stream of extents (DESIGN.md, "One transfer engine
for every direction"). DATA carries payload, ZERO reads back as zeros and
needs no payload, SKIP is provably unused and is never sent (left unallocated
in qcow2, zeroed or discarded on metal). Every mapper in ``converters`` builds
an ``ExtentMap`` and every engine consumes one, so this module holds only
plain values and pure operations on them.

Maps are treated as values: every operation returns a new map. A map is
ordered, contiguous and covers ``[0, size)`` exactly; ``validate`` says so
and the constructors here keep it true.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class ExtentKind(enum.Enum):
    DATA = "data"
    ZERO = "zero"
    SKIP = "skip"  # provably unused: never sent


class ExtentMapError(ValueError):
    """A map that does not cover its disk exactly, in order."""


@dataclass(frozen=True, slots=True)
class Extent:
    offset: int
    length: int
    kind: ExtentKind

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class ExtentMap:
    size: int
    extents: list[Extent]

    @classmethod
    def whole(cls, size: int, kind: ExtentKind = ExtentKind.DATA) -> ExtentMap:
        return cls(size, [Extent(0, size, kind)] if size else [])

    @classmethod
    def from_ranges(
        cls,
        size: int,
        ranges: Iterable[tuple[int, int]],
        kind: ExtentKind,
        background: ExtentKind,
    ) -> ExtentMap:
        """``kind`` over ``ranges`` (offset, length), ``background`` elsewhere.
        Ranges may overlap or touch and come in any order; parts outside
        ``[0, size)`` are dropped."""
        return cls.whole(size, background).overlay_ranges(ranges, kind)

    def validate(self) -> None:
        pos = 0
        for ext in self.extents:
            if ext.offset != pos:
                raise ExtentMapError(f"extent at {ext.offset} expected at {pos}")
            if ext.length <= 0:
                raise ExtentMapError(f"empty extent at {ext.offset}")
            if not isinstance(ext.kind, ExtentKind):
                raise ExtentMapError(f"bad kind {ext.kind!r} at {ext.offset}")
            pos = ext.end
        if pos != self.size:
            raise ExtentMapError(f"map ends at {pos}, disk size is {self.size}")

    def __iter__(self) -> Iterator[Extent]:
        return iter(self.extents)

    def __len__(self) -> int:
        return len(self.extents)

    def normalized(self) -> ExtentMap:
        """Adjacent extents of one kind merged into one."""
        out: list[Extent] = []
        for ext in self.extents:
            if ext.length == 0:
                continue
            if out and out[-1].kind is ext.kind:
                last = out.pop()
                ext = Extent(last.offset, last.length + ext.length, ext.kind)
            out.append(ext)
        return ExtentMap(self.size, out)

    def bytes_of(self, kind: ExtentKind) -> int:
        return sum(e.length for e in self.extents if e.kind is kind)

    def of_kind(self, kind: ExtentKind) -> Iterator[Extent]:
        return (e for e in self.extents if e.kind is kind)

    def split(self, max_length: int) -> Iterator[Extent]:
        """Extents no longer than ``max_length``, cut at multiples of it so
        that chunks of every map of a disk line up (requests, qcow2
        clusters and the receiver's journal all see the same boundaries)."""
        if max_length <= 0:
            raise ValueError("max_length must be positive")
        for ext in self.extents:
            pos = ext.offset
            while pos < ext.end:
                cut = min(ext.end, (pos // max_length + 1) * max_length)
                yield Extent(pos, cut - pos, ext.kind)
                pos = cut

    def overlay(
        self,
        offset: int,
        length: int,
        kind: ExtentKind,
        *,
        only: ExtentKind | None = None,
    ) -> ExtentMap:
        """``kind`` over ``[offset, offset+length)``; with ``only``, just the
        parts of that range that were of kind ``only`` change."""
        return self.overlay_ranges([(offset, length)], kind, only=only)

    def overlay_ranges(
        self,
        ranges: Iterable[tuple[int, int]],
        kind: ExtentKind,
        *,
        only: ExtentKind | None = None,
    ) -> ExtentMap:
        """``overlay`` for many ranges in one pass: a sweep over the map and
        the merged ranges, linear in both (partclone maps of fragmented
        filesystems have hundreds of thousands of ranges)."""
        marks = _merge_ranges(ranges, self.size)
        out: list[Extent] = []
        j = 0
        for ext in self.extents:
            pos = ext.offset
            while pos < ext.end:
                while j < len(marks) and marks[j][1] <= pos:
                    j += 1
                if j < len(marks) and marks[j][0] <= pos:
                    cut = min(ext.end, marks[j][1])
                    new = kind if only is None or ext.kind is only else ext.kind
                else:
                    cut = min(ext.end, marks[j][0]) if j < len(marks) else ext.end
                    new = ext.kind
                out.append(Extent(pos, cut - pos, new))
                pos = cut
        return ExtentMap(self.size, out).normalized()

    def slice(self, offset: int, length: int) -> ExtentMap:
        """The part ``[offset, offset+length)`` as a map of its own, rebased
        to 0 (what one partition, LV or request sees)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ExtentMapError(f"slice {offset}+{length} outside {self.size}")
        end = offset + length
        starts = [e.offset for e in self.extents]
        i = max(bisect.bisect_right(starts, offset) - 1, 0)
        out: list[Extent] = []
        for ext in self.extents[i:]:
            if ext.offset >= end:
                break
            lo, hi = max(ext.offset, offset), min(ext.end, end)
            if hi > lo:
                out.append(Extent(lo - offset, hi - lo, ext.kind))
        return ExtentMap(length, out)

    def embed(self, offset: int, sub: ExtentMap) -> ExtentMap:
        """``sub`` placed at ``offset``, replacing what was there (a
        partition's own map put into its disk's map)."""
        if offset < 0 or offset + sub.size > self.size:
            raise ExtentMapError(f"embed {offset}+{sub.size} outside {self.size}")
        before = self.slice(0, offset).extents
        moved = [Extent(e.offset + offset, e.length, e.kind) for e in sub.extents]
        end = offset + sub.size
        after = [
            Extent(e.offset + end, e.length, e.kind)
            for e in self.slice(end, self.size - end).extents
        ]
        return ExtentMap(self.size, before + moved + after).normalized()

    def coarsened(self, min_length: int) -> ExtentMap:
        """ZERO and SKIP extents shorter than ``min_length`` turned into DATA.

        Always safe (DATA is sent as it reads) and bounds the number of
        extents: a fragmented filesystem otherwise yields a request per 4 KiB
        hole, which costs more than the bytes it saves."""
        out = [
            Extent(e.offset, e.length, ExtentKind.DATA)
            if e.kind is not ExtentKind.DATA and e.length < min_length
            else e
            for e in self.extents
        ]
        return ExtentMap(self.size, out).normalized()

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "extents": [
                {"offset": e.offset, "length": e.length, "kind": e.kind.value}
                for e in self.extents
            ],
        }

    @classmethod
    def from_json(cls, obj: dict) -> ExtentMap:
        try:
            emap = cls(
                int(obj["size"]),
                [
                    Extent(int(e["offset"]), int(e["length"]), ExtentKind(e["kind"]))
                    for e in obj["extents"]
                ],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ExtentMapError(f"not an extent map: {err}") from err
        emap.validate()
        return emap


def _merge_ranges(
    ranges: Iterable[tuple[int, int]], size: int
) -> list[tuple[int, int]]:
    """Sorted, merged, clipped ``(start, end)`` pairs from (offset, length)."""
    spans = sorted(
        (max(o, 0), min(o + n, size)) for o, n in ranges if n > 0 and o < size
    )
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if hi <= lo:
            continue
        if merged and lo <= merged[-1][1]:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged
