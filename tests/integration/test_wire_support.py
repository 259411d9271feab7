"""Fixtures and helpers of the wire tests (no tests of its own).

A real ``ferry serve`` runs as a subprocess on 127.0.0.1 with TLS, writing
qcow2 through real qemu-nbd; every process is ended by its own pid, the
qemu-nbd ones through the pid files the server keeps next to each image.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from converters.extents import Extent, ExtentKind, ExtentMap
from converters.wire.pairing import Pairing

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
D, Z, S = ExtentKind.DATA, ExtentKind.ZERO, ExtentKind.SKIP


class Serve:
    """``ferry serve`` as a subprocess."""

    def __init__(
        self, storage: Path, log: Path, convert: bool = False, check_boot: bool = False
    ) -> None:
        # convert: serve's own conversion of completed machine captures
        # (minutes of guestfs in TCG), off unless a test is about it;
        # check_boot: and a boot check of each converted VM (a QEMU boot).
        self.convert = convert
        self.check_boot = check_boot
        self.storage = storage
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.pairing: Pairing | None = None
        self.port = 0

    def start(self, port: int | None = None, timeout: float = 30.0) -> Pairing:
        port = self.port if port is None else port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "converters.wire.serve_command",
                "--storage",
                str(self.storage),
                "--listen",
                f"127.0.0.1:{port}",
                *([] if self.convert else ["--no-convert"]),
                *(["--check-boot"] if self.check_boot else []),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - owned by the child
            text=True,
        )
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            if line.startswith("pairing: "):
                self.pairing = Pairing.parse(line.split(" ", 1)[1])
                self.port = self.pairing.port
                return self.pairing
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError(f"ferry serve did not start: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()

    def kill(self) -> None:
        """A crash: no flush, no journal, qemu-nbd left running."""
        self.stop(signal.SIGKILL)

    def end_orphans(self) -> None:
        for pid_file in self.storage.glob("*/*.nbd.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)

    def session_record(self, name: str) -> dict:
        return json.loads((self.storage / name / "session.json").read_text())


@pytest.fixture
def serve(tmp_path):
    storage = tmp_path / "storage"
    server = Serve(storage, tmp_path / "serve.stderr")
    yield server
    server.stop()
    server.end_orphans()


@pytest.fixture
def pairing(serve) -> Pairing:
    return serve.start()


def write_source(path: Path, layout: list[tuple[int, ExtentKind, str]], seed=1):
    """A raw source file and its map from ``(length, kind, content)`` rows;
    content is random, text, zeros or hole (left sparse)."""
    rng = random.Random(seed)
    extents, pos = [], 0
    with open(path, "wb") as f:
        for length, kind, content in layout:
            extents.append(Extent(pos, length, kind))
            f.seek(pos)
            if content == "random":
                f.write(rng.randbytes(length))
            elif content == "text":
                f.write(_text(rng, length))
            elif content == "zeros":
                f.write(bytes(length))
            pos += length
        f.truncate(pos)
    return ExtentMap(pos, extents).normalized()


def _text(rng: random.Random, length: int) -> bytes:
    words = [rng.randbytes(6).hex().encode() for _ in range(300)]
    out = bytearray()
    while len(out) < length:
        out += b" ".join(rng.choice(words) for _ in range(2000)) + b"\n"
    return bytes(out[:length])


# About 256 MiB: every kind, compressible and random data, zeros inside DATA
# (zero detection), garbage under SKIP (deleted data that must not travel),
# and extents that do not end on a chunk or cluster boundary.
LAYOUT_256 = [
    (1 * MiB, D, "random"),
    (31 * MiB, D, "text"),
    (16 * MiB, Z, "hole"),
    (32 * MiB, S, "random"),
    (24 * MiB, D, "zeros"),
    (64 * MiB, D, "random"),
    (16 * MiB, S, "text"),
    (3 * MiB + 4096, D, "text"),
    (MiB - 4096, S, "random"),
    (20 * MiB, D, "random"),
    (8 * MiB, Z, "hole"),
    (36 * MiB + 512, D, "text"),
]


def expected_image(source: Path, emap: ExtentMap, out: Path) -> Path:
    """The source with SKIP areas zeroed: what the qcow2 must read as."""
    subprocess.run(["cp", "--sparse=always", source, out], check=True)
    with open(out, "r+b") as f:
        for ext in emap.of_kind(S):
            f.seek(ext.offset)
            f.write(bytes(ext.length))
    return out


def qemu_img_compare(raw: Path, qcow2: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", raw, qcow2],
        capture_output=True,
        text=True,
    )


def qemu_img_map(qcow2: Path) -> list[dict]:
    out = subprocess.run(
        ["qemu-img", "map", "-U", "--output=json", qcow2],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def data_ranges(qcow2: Path) -> list[tuple[int, int]]:
    """Where the qcow2 holds data clusters, as (start, end)."""
    return [
        (e["start"], e["start"] + e["length"]) for e in qemu_img_map(qcow2) if e["data"]
    ]


def overlaps(ranges, start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in ranges)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """A TCP relay between client and server that counts bytes and can cut
    every connection at once: a dropped link, as the client sees it."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_bytes = 0
        self.downstream_bytes = 0
        # cut once this many bytes went up (client to server) / came down
        self.cut_after: int | None = None
        self.cut_after_down: int | None = None
        # the cut_after cut closes the listener too: the link stays down
        self.stay_down = False
        # bytes per second and connection going up, None: as fast as it can
        self.rate: float | None = None
        # once this many bytes went up, nothing more goes up until release():
        # a link that stalls, for as long as a test needs the transfer to be
        # mid-flight whatever the host's speed
        self.hold_after: int | None = None
        self.held = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self.cuts = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True)).start()
            threading.Thread(target=self._pipe, args=(server, client, False)).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(256 << 10):
                if upstream:
                    self._open.wait()
                dst.sendall(data)
                self._count(len(data), upstream)
                if upstream and self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _count(self, n: int, upstream: bool) -> None:
        with self._lock:
            if upstream:
                self.upstream_bytes += n
                due = self.cut_after is not None and (
                    self.upstream_bytes >= self.cut_after
                )
                if due:
                    self.cut_after = None
                if self.hold_after is not None and (
                    self.upstream_bytes >= self.hold_after
                ):
                    self.hold_after = None
                    self._open.clear()
                    self.held.set()
            else:
                self.downstream_bytes += n
                due = self.cut_after_down is not None and (
                    self.downstream_bytes >= self.cut_after_down
                )
                if due:
                    self.cut_after_down = None
        if due and self.stay_down:
            self.close()
        elif due:
            self.cut()

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            self.cuts += 1
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def release(self) -> None:
        """End a hold: what waited goes up now."""
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self.listener.close()
        self.cut()
