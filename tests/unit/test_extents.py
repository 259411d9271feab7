"""ExtentMap operations checked against a byte-per-offset model: every
operation must give the same kinds, offset by offset, as painting a list."""

import json

import pytest
from hypothesis import given, settings
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


# No deadline: on the shared 2-core machine one preempted example took
# 517 ms against hypothesis's 200 ms (the next run of it 0.8 ms).
@settings(deadline=None)
@given(maps())
def test_normalized_merges_without_changing_kinds(emap):
    norm = emap.normalized()
    norm.validate()
    assert model(norm) == model(emap)
    pairs = zip(norm.extents, norm.extents[1:], strict=False)
    assert all(a.kind is not b.kind for a, b in pairs)


@settings(deadline=None)
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


@settings(deadline=None)
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


@settings(deadline=None)
@given(maps(), st.integers(1, 20))
def test_split_bounds_length_and_aligns_cuts(emap, max_length):
    pieces = list(emap.split(max_length))
    assert model(ExtentMap(emap.size, pieces)) == model(emap)
    for piece in pieces:
        assert 0 < piece.length <= max_length
        assert piece.offset // max_length == (piece.end - 1) // max_length


@settings(deadline=None)
@given(maps(), st.integers(1, 20))
def test_coarsened_only_turns_short_holes_into_data(emap, min_length):
    got = emap.coarsened(min_length)
    got.validate()
    for before, after in zip(model(emap), model(got), strict=True):
        assert after is before or after is D
    for ext in got:
        assert ext.kind is D or ext.length >= min_length


@settings(deadline=None)
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


# Maps from tools' output: the pure parsers behind used_blocks and lvm_map.

DOMAIN = """\
# Domain logfile created by unset_name v0.3.23
# Source: /dev/loop0
# Offset: 0x00100000
# current_pos  current_status
0x00500000     ?
#      pos        size  status
0x00100000  0x00001000  +
0x00101000  0x00002000  ?
0x00103000  0x00001000  +
0x00104000  0x00001000  -
0x00105000  0x00002000  ?
"""


def test_parse_domain_skips_only_free_ranges():
    from converters.used_blocks import parse_domain

    emap = parse_domain(DOMAIN, 0x10000, offset=0x100000)
    assert [(e.offset, e.length, e.kind) for e in emap] == [
        (0x0000, 0x1000, D),
        (0x1000, 0x2000, S),
        (0x3000, 0x2000, D),  # "+" and an unknown status: both DATA
        (0x5000, 0x2000, S),
        (0x7000, 0x9000, D),  # past the filesystem's end: not proven free
    ]


def test_parse_domain_rejects_ranges_outside_the_partition():
    from converters.used_blocks import UsedBlocksError, parse_domain

    with pytest.raises(UsedBlocksError):
        parse_domain(DOMAIN, 0x4000, offset=0x100000)
    with pytest.raises(UsedBlocksError):
        parse_domain("# nothing\n", 0x4000)


def restart_page(in_use: int, flags: int, lsn: int) -> bytes:
    import struct

    page = bytearray(4096)
    page[0:4] = b"RSTR"
    struct.pack_into("<I", page, 0x10, 4096)  # system page size
    struct.pack_into("<H", page, 0x18, 0x30)  # restart area offset
    struct.pack_into("<QHHHH", page, 0x30, lsn, 1, 0xFFFF, in_use, flags)
    return bytes(page)


def test_ntfs_logfile_state_follows_the_newest_restart_page():
    from converters.used_blocks import ntfs_logfile_state

    clean, dirty = restart_page(0xFFFF, 0, 10), restart_page(0, 0, 20)
    tail = bytes(8192)
    assert ntfs_logfile_state(b"\xff" * 16384) is None
    assert ntfs_logfile_state(clean + restart_page(0, 2, 11) + tail) is None
    assert ntfs_logfile_state(clean + dirty + tail) is not None
    assert ntfs_logfile_state(bytes(16384)) is not None


VG_TEXT = """\
vg0 {
id = "abc"
seqno = 7
status = ["RESIZEABLE", "READ", "WRITE"]
extent_size = 8192  # 4 MiB
physical_volumes {
pv0 {
id = "Bkl5ha-QCkW-xBjR-riYq-I1Cy-mTjw-bRxdkC"
pe_start = 2048
pe_count = 100
}
}
logical_volumes {
root {
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 1
segment1 {
start_extent = 0
extent_count = 10
type = "striped"
stripe_count = 1
stripes = ["pv0", 0]
}
}
home {
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 2
segment1 {
start_extent = 0
extent_count = 5
type = "striped"
stripe_count = 1
stripes = ["pv0", 10]
}
segment2 {
start_extent = 5
extent_count = 5
type = "striped"
stripe_count = 1
stripes = ["pv0", 40]
}
}
pool {
status = ["READ", "WRITE", "VISIBLE"]
segment1 {
start_extent = 0
extent_count = 20
type = "thin-pool"
metadata = "pool_tmeta"
pool = "pool_tdata"
}
}
pool_tdata {
status = ["READ", "WRITE"]
segment1 {
start_extent = 0
extent_count = 20
type = "striped"
stripe_count = 1
stripes = ["pv0", 15]
}
}
}
}
contents = "Text Format Volume Group"
description = "a \\"quoted\\" word # not a comment"
"""


def test_lvm_metadata_gives_areas_and_plain_linear_lvs():
    from converters.lvm_map import _pv_from_text, parse_config

    tree = parse_config(VG_TEXT)
    assert tree["description"] == 'a "quoted" word # not a comment'
    pv = _pv_from_text(VG_TEXT, "Bkl5haQCkWxBjRriYqI1CymTjwbRxdkC")
    assert (pv.vg, pv.extent_size, pv.pe_start, pv.pe_count) == (
        "vg0",
        4 << 20,
        1 << 20,
        100,
    )
    assert sorted((a.lv, a.pe, a.count) for a in pv.areas) == [
        ("home", 10, 5),
        ("home", 40, 5),
        ("pool_tdata", 15, 20),
        ("root", 0, 10),
    ]
    assert pv.contiguous("root") == (0, 10)
    assert pv.contiguous("home") is None  # two runs apart
    assert pv.contiguous("pool_tdata") is None  # thin data: no filesystem
    assert pv.plain == {"root", "home"}


def test_lvm_segment_naming_a_pv_directly_is_refused():
    from converters.lvm_map import LvmError, _pv_from_text

    text = VG_TEXT.replace(
        'type = "thin-pool"', 'type = "mirror"\nmirrors = ["pv0", 0]'
    )
    with pytest.raises(LvmError, match="names PVs"):
        _pv_from_text(text, "Bkl5haQCkWxBjRriYqI1CymTjwbRxdkC")


def test_lvm_crc_matches_lvm2():
    from converters.lvm_map import lvm_crc

    # lvm2's calc_crc (lib/misc/crc.c), nibble table and all, as the oracle.
    table = [
        0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
        0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
        0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
        0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
    ]  # fmt: skip

    def calc_crc(data: bytes, crc: int = 0xF597A6CF) -> int:
        for byte in data:
            crc ^= byte
            crc = (crc >> 4) ^ table[crc & 0xF]
            crc = (crc >> 4) ^ table[crc & 0xF]
        return crc

    for data in (b"", b"LVM2", bytes(range(256)) * 3):
        assert lvm_crc(data) == calc_crc(data)
