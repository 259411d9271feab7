"""RangeSet: the receiver's committed set and the sender's to-do list."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from converters.wire.ranges import RangeSet

spans = st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 40)).map(
        lambda t: (t[0], t[0] + t[1])
    ),
    max_size=30,
)


def _bytes(ranges) -> set[int]:
    return {i for s, e in ranges for i in range(s, e)}


def test_touching_ranges_merge_into_one():
    rs = RangeSet([(0, 8), (16, 24), (8, 16)])
    assert list(rs) == [(0, 24)]
    assert rs.total == 24


def test_covers_and_missing_answer_what_is_left_to_send():
    rs = RangeSet([(0, 10), (20, 30)])
    assert rs.covers(2, 10) and not rs.covers(5, 25)
    assert rs.missing(5, 35) == [(10, 20), (30, 35)]
    assert rs.overlap(5, 25) == 10


def test_discard_cuts_holes():
    rs = RangeSet([(0, 100)])
    rs.discard(10, 20)
    rs.discard(90, 200)
    assert list(rs) == [(0, 10), (20, 90)]


def test_json_is_offset_length_pairs():
    rs = RangeSet([(4096, 8192)])
    assert rs.to_json() == [[4096, 4096]]
    assert RangeSet.from_json(rs.to_json()) == rs


@given(spans, spans)
def test_a_rangeset_holds_exactly_the_bytes_added_minus_those_discarded(adds, drops):
    rs = RangeSet(adds)
    for s, e in drops:
        rs.discard(s, e)
    expected = _bytes(adds) - _bytes(drops)
    assert _bytes(rs) == expected
    assert rs.total == len(expected)
    pairs = list(rs)
    assert all(a[1] < b[0] for a, b in zip(pairs, pairs[1:], strict=False))


@given(spans, st.integers(0, 250), st.integers(0, 60))
def test_missing_and_overlap_partition_any_range(adds, start, length):
    rs = RangeSet(adds)
    end = start + length
    missing = rs.missing(start, end)
    assert _bytes(missing) == set(range(start, end)) - _bytes(adds)
    assert rs.overlap(start, end) + len(_bytes(missing)) == length
    assert rs.covers(start, end) == (not missing)
