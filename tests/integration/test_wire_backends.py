"""Storage backends on real qemu-nbd and real files."""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest
from test_wire_support import MiB, data_ranges, qemu_img_map

from converters import backends
from converters.backends import qcow2
from converters.extents import ExtentKind


def test_qcow2_writes_data_and_keeps_zeros_unallocated(tmp_path):
    image = tmp_path / "sda.qcow2"
    backends.create(image, 64 * MiB)
    payload = os.urandom(2 * MiB)
    with backends.open(image, "r+") as b:
        assert b.size == 64 * MiB
        b.write(4 * MiB, payload)
        b.write(8 * MiB, payload)
        b.zero(8 * MiB, 2 * MiB)  # data overwritten by zeros
        b.zero(16 * MiB, 32 * MiB)  # never written
        b.flush()
        emap = b.extents()
        assert b.read(4 * MiB, 2 * MiB) == payload
        assert b.read(8 * MiB, 4096) == bytes(4096)

    assert [(e.offset, e.length) for e in emap.of_kind(ExtentKind.DATA)] == [
        (4 * MiB, 2 * MiB)
    ]
    assert data_ranges(image) == [(4 * MiB, 6 * MiB)]
    assert not list(tmp_path.glob("*.nbd.*"))  # socket and pid file gone


def test_a_qemu_nbd_left_by_a_killed_server_is_ended_by_its_pid(tmp_path):
    image = tmp_path / "sda.qcow2"
    backends.create(image, 8 * MiB)
    orphan = qcow2.QemuNbd(image, readonly=False, connections=1)
    orphan.start()
    pid = int(orphan.pid_path.read_text())
    orphan._proc = None  # forget it, as a SIGKILLed server would

    with backends.open(image, "r+") as b:  # would fail on the write lock
        b.write(0, b"x" * 4096)

    assert not qcow2._alive(pid)


def test_raw_files_punch_holes_and_report_them(tmp_path):
    path = tmp_path / "sda.raw"
    backends.create(f"file://{path}", 16 * MiB)
    with backends.open(path, "r+") as b:
        b.write(0, os.urandom(4 * MiB))
        b.zero(1 * MiB, 2 * MiB)
        b.flush()
        emap = b.extents()
        assert b.read(1 * MiB, 4096) == bytes(4096)
    data = [(e.offset, e.end) for e in emap.of_kind(ExtentKind.DATA)]
    assert data == [(0, 1 * MiB), (3 * MiB, 4 * MiB)]
    assert os.stat(path).st_blocks * 512 <= 2 * MiB + 64 * 1024


def test_unknown_schemes_are_refused():
    with pytest.raises(backends.Unsupported):
        backends.open("rbd://pool/image")


def test_a_full_filesystem_is_enospc(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "t", mount]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        image = mount / "sda.qcow2"
        backends.create(image, 64 * MiB)
        with backends.open(image, "r+") as b, pytest.raises(OSError) as caught:
            for off in range(0, 64 * MiB, 4 * MiB):
                b.write(off, os.urandom(4 * MiB))
        assert caught.value.errno == errno.ENOSPC
        assert qemu_img_map(image)  # still a readable image
    finally:
        for pid_file in mount.glob("*.nbd.pid"):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        subprocess.run(["umount", "-l", mount], check=True)
