"""What the uploader cuts from a map: requests the server lacks, aligned."""

from __future__ import annotations

import pytest

from converters.events import EventStream
from converters.extents import Extent, ExtentKind, ExtentMap
from converters.wire.errors import (
    Incomplete,
    StorageFull,
    TransferError,
    WireError,
    from_reply,
)
from converters.wire.progress import DiskStats, Meter
from converters.wire.ranges import RangeSet
from converters.wire.sources import DiskSource, Job, interleave, read_buffer, read_into

MiB, GiB = 1 << 20, 1 << 30
D, Z, S = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.SKIP


def _job(tmp_path, extents, name="sda") -> Job:
    path = tmp_path / name
    path.write_bytes(b"")
    emap = ExtentMap(sum(e.length for e in extents), extents)
    emap.validate()
    return Job(
        DiskSource(name, path, emap),
        DiskStats(name),
        Meter(DiskStats(name), EventStream()),
    )


def test_data_is_cut_at_chunk_multiples_zero_in_gib_steps_and_skip_never(tmp_path):
    job = _job(
        tmp_path,
        [
            Extent(0, 3 * MiB, D),
            Extent(3 * MiB, 2 * GiB, Z),
            Extent(3 * MiB + 2 * GiB, MiB, S),
        ],
    )
    items = [(i.offset, i.length, i.kind) for i in job.items(2 * MiB)]
    assert items == [
        (0, 2 * MiB, D),
        (2 * MiB, MiB, D),
        (3 * MiB, GiB - 3 * MiB, Z),
        (GiB, GiB, Z),
        (2 * GiB, 3 * MiB, Z),
    ]
    job.close()


def test_only_what_the_server_lacks_is_cut(tmp_path):
    job = _job(tmp_path, [Extent(0, 8 * MiB, D)])
    job.committed = RangeSet([(0, 2 * MiB), (3 * MiB, 4 * MiB + 4096)])
    items = [(i.offset, i.end) for i in job.items(2 * MiB)]
    assert items == [(2 * MiB, 3 * MiB), (4 * MiB + 4096, 6 * MiB), (6 * MiB, 8 * MiB)]
    assert job.data_done() == 3 * MiB + 4096
    job.close()


def test_disks_take_turns(tmp_path):
    a = _job(tmp_path, [Extent(0, 3 * MiB, D)], "a")
    b = _job(tmp_path, [Extent(0, MiB, D)], "b")
    order = [i.job.name for i in interleave([a.items(MiB), b.items(MiB)])]
    assert order == ["a", "b", "a", "a"]
    a.close()
    b.close()


def test_server_errors_come_back_as_their_classes():
    full = from_reply(507, {"error": "storage-full", "message": "storage full: x"})
    assert isinstance(full, StorageFull) and str(full) == "storage full: x"
    missing = from_reply(409, {"error": "incomplete", "message": "m", "missing": 5})
    assert isinstance(missing, Incomplete) and missing.fields["missing"] == 5
    other = from_reply(502, None)
    assert type(other) is WireError and other.status == 502


def test_direct_reads_round_out_to_sectors_and_slice(tmp_path):
    path = tmp_path / "disk"
    data = bytes(range(256)) * (3 * 4096 // 256) + b"tail"
    path.write_bytes(data)
    emap = ExtentMap(len(data), [Extent(0, len(data), D)])
    job = Job(DiskSource("sda", path, emap), DiskStats("sda"), None, direct=True)
    buf = read_buffer(8192)

    assert job.direct  # tmp_path is on a filesystem with O_DIRECT
    assert bytes(read_into(job, buf, 4000, 200)) == data[4000:4200]
    assert bytes(read_into(job, buf, 8192, 4100)) == data[8192:]
    with pytest.raises(TransferError):
        read_into(job, buf, 8192, 4200)
    job.close()
