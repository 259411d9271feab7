"""The order ferry deploy writes chunks in: two halves of the data in turn,
the same chunks as in disk order (journals and read sharing rely on it)."""

from __future__ import annotations

from converters.deploy_write import _work_items
from converters.extents import Extent, ExtentKind, ExtentMap

MiB = 1 << 20
D, Z = ExtentKind.DATA, ExtentKind.ZERO


def ranges(items):
    return [(i.offset // MiB, i.length // MiB, i.kind) for i in items]


def test_two_spans_alternate_between_the_halves_of_the_data_with_the_same_items():
    extents = [
        Extent(0, 30 * MiB, D),
        Extent(30 * MiB, 10 * MiB, Z),
        Extent(40 * MiB, 60 * MiB, D),
        Extent(100 * MiB, 28 * MiB, Z),  # after the last data
    ]
    emap = ExtentMap(128 * MiB, extents)
    in_order = ranges(_work_items(emap, 8 * MiB, 1))
    spread = ranges(_work_items(emap, 8 * MiB, 2))
    assert sorted(spread) == sorted(in_order)
    assert in_order == sorted(in_order)
    assert in_order[-1] == spread[-1] == (100, 28, Z)
    # 90 MiB of data: the second half starts at 45 MiB of data, at 56 MiB.
    assert spread[:4] == [(0, 8, D), (56, 8, D), (8, 8, D), (64, 8, D)]


def test_an_image_without_data_is_only_zeroed():
    emap = ExtentMap(64 * MiB, [Extent(0, 64 * MiB, Z)])
    assert ranges(_work_items(emap, 8 * MiB, 2)) == [(0, 64, Z)]
