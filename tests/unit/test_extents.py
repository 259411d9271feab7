"""ExtentMap operations checked against a byte-per-offset model: every
operation must give the same kinds, offset by offset, as painting a list."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converters.extents import Extent, ExtentKind, ExtentMap, ExtentMapError

D, Z, S = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.SKIP
KINDS = st.sampled_from([D, Z, S])


def model(emap: ExtentMap) -> list[ExtentKind]:
    out: list[ExtentKind] = []
    for ext in emap:
        out.extend([ext.kind] * ext.length)
    return out


@st.composite
def maps(draw, max_size=64, size=None):
    size = draw(st.integers(0, max_size)) if size is None else size
    cuts = sorted(draw(st.sets(st.integers(1, max(size - 1, 1)), max_size=8)))
    bounds = [0] + [c for c in cuts if 0 < c < size] + [size]
    extents = [
        Extent(lo, hi - lo, draw(KINDS))
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]
    return ExtentMap(size, extents)


ranges = st.lists(st.tuples(st.integers(-8, 72), st.integers(0, 40)), max_size=6)


def test_whole_covers_the_disk():
    emap = ExtentMap.whole(4096)
    emap.validate()
    assert emap.extents == [Extent(0, 4096, D)]
    assert emap.extents[0].end == 4096
    assert ExtentMap.whole(0).extents == []


@pytest.mark.parametrize(
    "extents, message",
    [
        ([Extent(0, 10, D), Extent(11, 89, D)], "expected at 10"),
        ([Extent(0, 10, D), Extent(10, 0, D), Extent(10, 90, S)], "empty"),
        ([Extent(0, 50, D)], "ends at 50"),
    ],
)
def test_validate_rejects_gaps_empties_and_short_maps(extents, message):
    with pytest.raises(ExtentMapError, match=message):
        ExtentMap(100, extents).validate()


@given(maps())
def test_normalized_merges_without_changing_kinds(emap):
    norm = emap.normalized()
    norm.validate()
    assert model(norm) == model(emap)
    pairs = zip(norm.extents, norm.extents[1:], strict=False)
    assert all(a.kind is not b.kind for a, b in pairs)


@given(maps(), ranges, KINDS, st.one_of(st.none(), KINDS))
def test_overlay_ranges_paints_like_the_model(emap, spans, kind, only):
    got = emap.overlay_ranges(spans, kind, only=only)
    got.validate()
    want = model(emap)
    for offset, length in spans:
        for i in range(max(offset, 0), min(offset + length, emap.size)):
            if only is None or model(emap)[i] is only:
                want[i] = kind
    assert model(got) == want


@given(maps(), st.data())
def test_slice_and_embed_round_trip(emap, data):
    offset = data.draw(st.integers(0, emap.size))
    length = data.draw(st.integers(0, emap.size - offset))
    part = emap.slice(offset, length)
    part.validate()
    assert model(part) == model(emap)[offset : offset + length]
    other = data.draw(maps(size=length))
    placed = emap.embed(offset, other)
    placed.validate()
    want = model(emap)
    want[offset : offset + length] = model(other)
    assert model(placed) == want


@given(maps(), st.integers(1, 20))
def test_split_bounds_length_and_aligns_cuts(emap, max_length):
    pieces = list(emap.split(max_length))
    assert model(ExtentMap(emap.size, pieces)) == model(emap)
    for piece in pieces:
        assert 0 < piece.length <= max_length
        assert piece.offset // max_length == (piece.end - 1) // max_length


@given(maps(), st.integers(1, 20))
def test_coarsened_only_turns_short_holes_into_data(emap, min_length):
    got = emap.coarsened(min_length)
    got.validate()
    for before, after in zip(model(emap), model(got), strict=True):
        assert after is before or after is D
    for ext in got:
        assert ext.kind is D or ext.length >= min_length


@given(maps())
def test_json_round_trip(emap):
    text = json.dumps(emap.to_json())
    assert ExtentMap.from_json(json.loads(text)) == emap


def test_from_json_rejects_a_broken_map():
    bad = {"size": 10, "extents": [{"offset": 0, "length": 5, "kind": "data"}]}
    with pytest.raises(ExtentMapError):
        ExtentMap.from_json(bad)
    with pytest.raises(ExtentMapError):
        ExtentMap.from_json({"size": 1, "extents": [{"offset": 0}]})


def test_bytes_of_and_from_ranges():
    emap = ExtentMap.from_ranges(100, [(10, 10), (15, 10), (90, 50)], D, S)
    assert emap.extents == [
        Extent(0, 10, S),
        Extent(10, 15, D),
        Extent(25, 65, S),
        Extent(90, 10, D),
    ]
    assert emap.bytes_of(D) == 25
    assert emap.bytes_of(S) == 75
    assert emap.bytes_of(Z) == 0
    assert [e.offset for e in emap.of_kind(D)] == [10, 90]
