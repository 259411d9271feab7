"""Where a V2P image comes from: one disk of an image on ``ferry serve``, a
local qcow2 or raw file (a USB stick), or an http(s) URL of one.

Every source offers the same small interface: ``name``, ``size``,
``extents()`` (DATA and ZERO), ``read(offset, length)`` (safe from several
threads) and ``close()``. Nothing is staged: each read fetches one range.
Local files and URLs are read through our own read-only ``qemu-nbd`` on a
socket in a private folder (a read-only USB stick has no room for the pid
file the KVM side's qcow2 backend keeps beside its images).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from converters.events import EventStream
from converters.extents import ExtentMap
from converters.wire import protocol
from converters.wire.connection import WireClient
from converters.wire.errors import ChecksumMismatch, LinkDown, WireError
from converters.wire.pairing import Pairing
from converters.wire.retry import Backoff

START_TIMEOUT = 30.0  # a URL's qcow2 header comes over the network
# A range whose checksum does not match is fetched again this often.
MAX_REJECTS = 3


class SourceError(Exception):
    """An image that cannot be read; the message says why in one line."""


@dataclass(frozen=True)
class ImageInfo:
    """An image a server offers: ``disks`` are ``(name, virtual size)``."""

    name: str
    disks: tuple[tuple[str, int], ...]
    server: str  # the pairing string
    kind: str = "capture"


def list_images(server: str | Pairing) -> list[ImageInfo]:
    pairing = server if isinstance(server, Pairing) else Pairing.parse(server)
    client = WireClient(pairing, timeout=30)
    try:
        reply = client.request_json("GET", f"{protocol.API}/images")
    finally:
        client.close()
    return [
        ImageInfo(
            item["name"],
            tuple((d["name"], int(d["size"])) for d in item["disks"]),
            str(pairing),
            item.get("kind", "capture"),
        )
        for item in reply["images"]
    ]


class ServerDisk:
    """One disk of a server image; a dropped link is retried with backoff
    for ``retry_timeout`` seconds, as capture does."""

    def __init__(
        self,
        pairing: Pairing,
        image: str,
        disk: str,
        size: int,
        *,
        retry_timeout: float = 600.0,
        events: EventStream | None = None,
    ) -> None:
        self.pairing = pairing
        self.image = image
        self.name = disk
        self.size = size
        self.retry_timeout = retry_timeout
        self.events = events or EventStream()
        self.link_failures = 0
        # What a resumed deploy must find again (deploy_journal).
        self.identity = f"ferry:{pairing.fingerprint}/{image}/{disk}"
        self._local = threading.local()
        self._clients: list[WireClient] = []
        self._lock = threading.Lock()

    def _client(self) -> WireClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = WireClient(self.pairing)
            with self._lock:
                self._clients.append(client)
        return client

    def _retry(self, func):
        backoff = Backoff(self.retry_timeout)
        rejects = 0
        while True:
            try:
                return func(self._client())
            except LinkDown as e:
                with self._lock:
                    self.link_failures += 1
                backoff.wait(e, self.events)
            except ChecksumMismatch:
                rejects += 1
                if rejects >= MAX_REJECTS:
                    raise

    def extents(self) -> ExtentMap:
        path = protocol.image_path(self.image, self.name) + "/extents"
        return ExtentMap.from_json(self._retry(lambda c: c.request_json("GET", path)))

    def read(self, offset: int, length: int) -> bytes:
        path = protocol.image_path(self.image, self.name)
        headers = {
            "Range": protocol.range_header(offset, length),
            "Accept-Encoding": "zstd",
        }

        def fetch(client: WireClient) -> bytes:
            reply = client.request("GET", path, None, headers)
            encoding = reply.headers.get("Content-Encoding", "identity")
            data = protocol.decode(reply.data, encoding, length)
            protocol.verify(
                data, reply.headers.get(protocol.CHECKSUM_HEADER, ""), offset
            )
            return data

        return self._retry(fetch)

    def read_into(self, offset: int, length: int, buf) -> tuple[object, str]:
        """The range decoded into ``buf`` (a worker's O_DIRECT buffer: no
        8 MiB allocation and no copy per chunk), and its checksum as the
        server sent it and we checked it: the digest the read-back
        verification compares with, at no extra hashing."""
        path = protocol.image_path(self.image, self.name)
        headers = {
            "Range": protocol.range_header(offset, length),
            "Accept-Encoding": "zstd",
        }

        def body_buffer(reply_headers, body_length: int):
            # A raw body lands in place; a zstd frame in this thread's own
            # buffer, decoded from there into ``buf``.
            if reply_headers.get("Content-Encoding", "identity") == "identity":
                return buf if body_length <= len(buf) else bytearray(body_length)
            frame = getattr(self._local, "frame", None)
            if frame is None or len(frame) < body_length:
                frame = self._local.frame = bytearray(
                    max(body_length, protocol.MAX_CHUNK + protocol.BODY_SLACK)
                )
            return frame

        def fetch(client: WireClient):
            reply = client.request("GET", path, None, headers, into=body_buffer)
            encoding = reply.headers.get("Content-Encoding", "identity")
            data = protocol.decode(reply.data, encoding, length, out=buf)
            expected = reply.headers.get(protocol.CHECKSUM_HEADER, "")
            protocol.verify(data, expected, offset)
            return data, expected.lower()

        return self._retry(fetch)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def probe(spec: str) -> tuple[str, int]:
    """``(format, virtual size)`` of a local file or URL, by ``qemu-img``."""
    url = spec.startswith(("http://", "https://"))
    if not url and not os.path.isfile(spec):
        raise SourceError(f"no image file {spec}")
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", spec],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["no detail"]
        raise SourceError(f"{spec} is not a readable disk image: {lines[-1]}")
    info = json.loads(out.stdout)
    if info["format"] not in ("qcow2", "raw"):
        raise SourceError(
            f"{spec} is a {info['format']} image; V2P takes qcow2 or raw "
            "(ferry import converts the others on the KVM side)"
        )
    return info["format"], int(info["virtual-size"])


def disk_name(spec: str) -> str:
    stem = os.path.basename(spec.split("?", 1)[0]).split(".", 1)[0]
    return stem if protocol.valid_name(stem) else "disk"


class FileDisk:
    """A local image file or URL through a read-only qemu-nbd of our own."""

    def __init__(self, spec: str, fmt: str, size: int, name: str = "") -> None:
        from converters.backends import nbd

        self.spec = spec
        self.name = name or disk_name(spec)
        self.identity = spec
        if not spec.startswith(("http://", "https://")):
            st = os.stat(spec)
            self.identity = f"{os.path.abspath(spec)}@{st.st_mtime_ns}"
        self.size = size
        self.link_failures = 0
        self._dir = tempfile.mkdtemp(prefix="ferry-deploy-")
        sock = Path(self._dir) / "nbd.sock"
        if spec.startswith(("http://", "https://")):
            # json: pseudo-filename: the curl driver under the format driver.
            driver = "https" if spec.startswith("https") else "http"
            target = "json:" + json.dumps(
                {"driver": fmt, "file": {"driver": driver, "url": spec}}
            )
            args = [target]
        else:
            args = [f"--format={fmt}", os.path.abspath(spec)]
        with tempfile.TemporaryFile() as errors:
            self._proc = subprocess.Popen(
                ["qemu-nbd", "--read-only", "--persistent", "--shared=8"]
                + [f"--socket={sock}", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
            try:
                _wait_listening(self._proc, sock, errors)
                self._backend = nbd.open(str(sock), "r", connections=4)
            except BaseException:
                self.close()
                raise

    def extents(self) -> ExtentMap:
        return self._backend.extents()

    def read(self, offset: int, length: int) -> bytes:
        return self._backend.read(offset, length)

    def read_into(self, offset: int, length: int, buf) -> tuple[object, str]:
        """The range read into ``buf`` (the worker's O_DIRECT buffer); no
        checksum came with it, so the writer makes one."""
        view = memoryview(buf)[:length]
        self._backend.read_into(offset, view)
        return view, ""

    def close(self) -> None:
        backend = getattr(self, "_backend", None)
        if backend is not None:
            backend.close()
            self._backend = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def _wait_listening(proc: subprocess.Popen, sock: Path, errors) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errors.seek(0)
            text = errors.read().decode(errors="replace").strip()
            raise SourceError(f"qemu-nbd could not open the image: {text}")
        with socket.socket(socket.AF_UNIX) as s, contextlib.suppress(OSError):
            s.connect(str(sock))
            return
        time.sleep(0.02)
    raise SourceError("qemu-nbd did not start serving the image")


__all__ = [
    "FileDisk",
    "ImageInfo",
    "ServerDisk",
    "SourceError",
    "WireError",
    "disk_name",
    "list_images",
    "probe",
]
