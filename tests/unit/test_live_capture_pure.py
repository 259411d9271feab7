"""Pure parts of live capture: request cutting, range arithmetic, the
tracker's event parsing and dirty map, the writer limit's io.max lines."""

from __future__ import annotations

from converters.extents import Extent, ExtentKind, ExtentMap
from converters.live_capture import minus, sendable
from converters.live_capture_limit import io_max_lines
from converters.live_capture_send import chunks
from converters.wire.ranges import RangeSet
from converters.write_tracker import _EVENT, _Bitmap, block_size, buffer_kb

MiB = 1 << 20
D, Z, S = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.SKIP


def test_requests_are_rounded_out_to_4k_and_cut_at_8mib_boundaries():
    ranges = {"sda": RangeSet([(1024, 3072), (8 * MiB - 512, 8 * MiB + 100)])}
    got = [(c.offset, c.length) for c in chunks(ranges, {"sda": 64 * MiB})]
    assert got == [(0, 4096), (8 * MiB - 4096, 4096), (8 * MiB, 4096)]


def test_requests_never_run_past_the_end_of_a_disk_of_odd_size():
    size = 10 * MiB + 512
    got = chunks({"sda": RangeSet([(size - 100, size)])}, {"sda": size})
    assert [(c.offset, c.offset + c.length) for c in got] == [(10 * MiB, size)]


def test_sendable_is_data_and_zero_and_minus_takes_clean_ranges_out():
    emap = ExtentMap(
        12 * MiB,
        [
            Extent(0, 4 * MiB, D),
            Extent(4 * MiB, 4 * MiB, S),
            Extent(8 * MiB, 4 * MiB, Z),
        ],
    )
    send = sendable(emap)
    assert list(send) == [(0, 4 * MiB), (8 * MiB, 12 * MiB)]
    left = minus(send, RangeSet([(MiB, 9 * MiB)]))
    assert list(left) == [(0, MiB), (9 * MiB, 12 * MiB)]
    assert list(send) == [(0, 4 * MiB), (8 * MiB, 12 * MiB)]  # unchanged


def test_tracker_reads_write_and_queue_events_from_trace_pipe_lines():
    rq = (
        b"ksoftirqd/0-14 [000] ..s.. 15069.58: block_rq_complete: "
        b"7,0 WS () 20482 + 2560 be,0,4 [0]"
    )
    bio = b"dd-637 [000] ..... 15069.57: block_bio_queue: 259,1 WFS 8 + 16 [dd]"
    m = _EVENT.search(rq)
    assert m.group(2, 3, 4, 5, 6) == (b"7", b"0", b"WS", b"20482", b"2560")
    m = _EVENT.search(bio)
    assert m.group(2, 3, 4, 5, 6) == (b"259", b"1", b"WFS", b"8", b"16")


def test_dirty_map_marks_whole_blocks_and_merges_neighbours():
    bm = _Bitmap(64 * MiB)
    bm.mark(100, 200)  # inside block 0
    bm.mark(4096, 8192)
    bm.mark(40960, 40961)
    assert list(bm.ranges()) == [(0, 8192), (40960, 45056)]


def test_dirty_map_stays_within_16_mib_for_big_disks():
    assert block_size(64 << 30) == 4096
    assert (2 << 40) // block_size(2 << 40) <= 1 << 24


def test_writer_limit_lines_name_each_disk_and_lift_with_max():
    assert io_max_lines([(8, 0), (259, 0)], 10_000_000) == [
        "8:0 wbps=10000000",
        "259:0 wbps=10000000",
    ]
    assert io_max_lines([(8, 0)], None) == ["8:0 wbps=max"]


def test_trace_buffers_stay_bounded_on_servers_with_many_cpus():
    assert buffer_kb(2) == 16384
    assert buffer_kb(64) * 64 <= 65536
    assert buffer_kb(1024) == 1024
