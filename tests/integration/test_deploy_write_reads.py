"""The deploy read and write paths: a qcow2 read through qemu-nbd into a
caller's buffer, or straight from its file where qemu-img's map says its
clusters are stored plain; a chunk that does not read back as written
stopping the deploy before the partition table is touched."""

from __future__ import annotations

import os
import subprocess

import pytest
from test_deploy_write import loop_device, old_disk
from test_wire_support import MiB

from converters import backends
from converters.backends.qcow2 import PlainReader
from converters.deploy_plan import DeployError
from converters.deploy_target import Target
from converters.deploy_write import HELD, write_disk
from converters.extents import Extent, ExtentKind, ExtentMap


def test_a_qcow2_range_is_read_into_the_callers_buffer(tmp_path):
    image = tmp_path / "sda.qcow2"
    backends.create(image, 32 * MiB)
    payload = os.urandom(3 * MiB)
    with backends.open(image, "r+") as b:
        b.write(5 * MiB, payload)
        b.flush()
    buf = bytearray(b"\xaa" * (4 * MiB))
    with backends.open(image, "r") as b:
        b.read_into(5 * MiB, memoryview(buf)[: 3 * MiB])
        assert buf[: 3 * MiB] == payload
        assert buf[3 * MiB :] == b"\xaa" * MiB  # nothing past the range
        b.read_into(20 * MiB, memoryview(buf)[:MiB])  # never written
        assert buf[:MiB] == bytes(MiB)
        with pytest.raises(OSError):
            b.read_into(32 * MiB - 4096, memoryview(buf)[: 2 * 4096])


class _Source:
    """An image of 16 MiB: a table area, then 14 MiB of data."""

    name = "img"
    size = 16 * MiB

    def __init__(self) -> None:
        self.data = os.urandom(self.size)

    def extents(self) -> ExtentMap:
        return ExtentMap(self.size, [Extent(0, self.size, ExtentKind.DATA)])

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class _BitRot(Target):
    """A real loop device whose reads of one range come back altered, as a
    failing disk's would."""

    def read(self, offset, length, buf):
        view = super().read(offset, length, buf)
        if offset <= 8 * MiB < offset + length:
            view[8 * MiB - offset] ^= 1
        return view


def test_a_chunk_that_reads_back_altered_stops_before_the_partition_table(
    tmp_path,
):
    source = _Source()
    disk = old_disk(tmp_path / "disk.img", 16 * MiB)
    table_before = disk.read_bytes()[:HELD]
    altered = pytest.raises(DeployError, match="did not read back as written")
    with loop_device(disk) as dev, _BitRot(dev) as target, altered:
        write_disk(source, target)
    written = disk.read_bytes()
    # The old table was wiped first and the image's was never written.
    assert written[:HELD] == bytes(HELD) != table_before
    assert written[HELD : 2 * MiB] == source.data[HELD : 2 * MiB]


def test_a_qcow2_is_read_from_its_file_where_stored_plain_and_through_nbd_elsewhere(
    tmp_path,
):
    """Compressed clusters, zero clusters, holes and plain clusters in one
    image: what ferry serve reads is what qemu-img reads."""
    plain = tmp_path / "plain.qcow2"
    backends.create(plain, 16 * MiB)
    rng = os.urandom(4 * MiB)
    with backends.open(plain, "r+") as b:
        b.write(0, rng)
        b.write(8 * MiB, b"text " * (MiB // 5) + b"x" * (MiB % 5))
    image = tmp_path / "mixed.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-c", "-O", "qcow2", plain, image], check=True
    )
    with backends.open(image, "r+") as b:
        b.write(MiB, rng[:MiB])  # a plain cluster run amid compressed ones
        b.write(12 * MiB, rng[:MiB])
        b.zero(12 * MiB + 65536, 65536)  # a zero cluster amid data
        b.flush()
    expected = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, expected], check=True)
    want = expected.read_bytes()

    with backends.open(image, "r") as b:
        reader = PlainReader.open(image)
        assert reader is not None
        kinds = {run.host is None for run in reader.runs}
        assert kinds == {True, False}  # both plain data and zeros mapped
        fallback = []

        def through_nbd(offset, view):
            fallback.append((offset, len(view)))
            b.read_into(offset, view)

        buf = bytearray(16 * MiB)
        for offset in range(0, 16 * MiB, 3 * MiB):  # ranges across runs
            length = min(3 * MiB, 16 * MiB - offset)
            reader.read_into(offset, memoryview(buf)[:length], through_nbd)
            assert buf[:length] == want[offset : offset + length], offset
        # One plain run: a view of the file's pages; compressed: none.
        assert reader.view(MiB, 64 << 10) == want[MiB : MiB + (64 << 10)]
        assert reader.view(8 * MiB, 64 << 10) is None
        reader.close()
    assert fallback  # the compressed clusters came through qemu-nbd


def test_a_qcow2_with_a_backing_file_is_read_through_nbd_only(tmp_path):
    base = tmp_path / "base.qcow2"
    backends.create(base, 4 * MiB)
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top],
        check=True,
    )
    assert PlainReader.open(top) is None
