"""The migration test guest's pieces that need no QEMU: its initramfs and
the slow link."""

from __future__ import annotations

import socket
import stat
import threading
import time

from tests.harness.migration_guest import Writer, build_initramfs
from tests.harness.migration_link import Link


def read_newc(blob: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) of a newc cpio archive."""
    entries, at = {}, 0
    while True:
        assert blob[at : at + 6] == b"070701"
        fields = [int(blob[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_at = at + 110
        name = blob[name_at : name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, blob[data_at : data_at + size])
        at = data_at + size + (-size % 4)


def test_initramfs_holds_init_the_console_and_modules_in_order():
    blob = build_initramfs(b"\x7fELF init", [("virtio", b"a"), ("virtio_blk", b"bc")])
    files = read_newc(blob)
    mode, data = files["init"]
    assert data == b"\x7fELF init" and mode & 0o111
    assert stat.S_ISCHR(files["dev/console"][0])
    assert files["modules"][1] == b"/lib/virtio.ko\n/lib/virtio_blk.ko\n"
    assert files["lib/virtio_blk.ko"][1] == b"bc"


def test_writer_settings_go_on_the_kernel_command_line():
    line = Writer(mb=48, mbps=128, cpu=True).append()
    assert "console=ttyS0" in line
    assert "writer.mb=48 writer.mbps=128" in line and "writer.cpu=1" in line


def test_link_carries_bytes_at_its_rate(tmp_path):
    target = tmp_path / "far.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(target))
    server.listen(1)
    got = bytearray()

    def sink() -> None:
        conn, _ = server.accept()
        while data := conn.recv(65536):
            got.extend(data)

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    with Link(tmp_path / "near.sock", target, rate=4 << 20) as link:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(link.listen))
        start = time.monotonic()
        client.sendall(b"x" * (2 << 20))
        client.close()
        thread.join(5)
        took = time.monotonic() - start
    server.close()
    assert len(got) == 2 << 20 and link.carried == 2 << 20
    assert 0.4 < took < 2.0  # 2 MiB at 4 MiB/s
