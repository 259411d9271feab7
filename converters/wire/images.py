"""The images ``ferry serve`` offers for V2P: every completed capture and
every VM that ``ferry import`` placed in its storage, read-only.

    GET /v1/images                          the catalogue
    GET /v1/images/I/disks/D                a range (Range: bytes=A-B)
    GET /v1/images/I/disks/D/extents        allocation (NBD block status)

A capture is offered once its session says complete (an interrupted one
never is); its reads go through the session's own disk, so one image never
has two qemu-nbd processes fighting over its pid file. An imported VM
(``STORAGE/NAME/sdX.qcow2`` + ``inventory.json``, no session) is opened
read-only here on first use and closed when idle. Deploy clients read only
the DATA extents of the map.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import subprocess
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from converters import backends
from converters.backends.qcow2 import PlainReader

from . import protocol
from .errors import Conflict, NotFound
from .protocol import API, CHECKSUM_HEADER, MAX_CHUNK, Payload, valid_name
from .sessions import Registry
from .storage import IDENTITY_DIR, INVENTORY_FILE, SESSION_FILE

log = logging.getLogger(__name__)

NAME = r"{%s:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"
# An imported image idle this long ends its qemu-nbd.
IDLE_CLOSE = 120.0
QCOW2_MAGIC = b"QFI\xfb"
MAX_READS = 8
# Eight 8 MiB chunks: enough for machines a few requests apart to share
# reads, small beside the server's per-session buffers.
CACHE_BYTES = 64 << 20
# What one write into TLS carries: a few dozen TLS records, below glibc's
# mmap threshold (ferry serve sets it to 1 MiB), so its buffers are reused.
SEND_SLICE = 256 << 10


@dataclass(frozen=True)
class ImageDisk:
    name: str
    size: int


@dataclass(frozen=True)
class ImageEntry:
    name: str
    kind: str  # "capture" or "import"
    disks: tuple[ImageDisk, ...]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "disks": [{"name": d.name, "size": d.size} for d in self.disks],
        }


def qcow2_size(path: Path) -> int:
    """The virtual size from the qcow2 header (bytes 24-31, big-endian):
    no qemu-img, which would need the image lock a conversion may hold."""
    with open(path, "rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        raise ValueError(f"{path} is not a qcow2 image")
    return struct.unpack(">Q", header[24:32])[0]


def catalogue(root: Path, registry: Registry) -> list[ImageEntry]:
    entries = []
    for folder in sorted(Path(root).iterdir()):
        name = folder.name
        if name == IDENTITY_DIR or not valid_name(name) or not folder.is_dir():
            continue
        if (folder / SESSION_FILE).exists():
            session = registry.sessions.get(name)
            if session is None or not session.record.complete:
                continue
            disks = tuple(ImageDisk(d.name, d.size) for d in session.record.disks)
            entries.append(ImageEntry(name, "capture", disks))
        elif (folder / INVENTORY_FILE).exists():
            disks = []
            for path in sorted(folder.glob("*.qcow2")):
                if not valid_name(path.stem):
                    continue
                try:
                    disks.append(ImageDisk(path.stem, qcow2_size(path)))
                except (OSError, ValueError) as e:
                    log.warning("IMAGES skip path=%s error=%s", path, e)
            if disks:
                entries.append(ImageEntry(name, "import", tuple(disks)))
    return entries


class _ImportedDisk:
    """One imported qcow2, read-only through qemu-nbd, whose lock keeps
    writers out while it is open; its plainly stored clusters are read
    straight from the file (qcow2.PlainReader)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = qcow2_size(path)
        self.last_used = time.monotonic()
        self._backend = None
        self._plain: PlainReader | None = None
        self._lock = threading.Lock()

    def backend(self):
        return self._open()[0]

    def _open(self):
        self.last_used = time.monotonic()
        with self._lock:
            if self._backend is None:
                try:
                    self._backend = backends.open(f"qcow2://{self.path}", "r")
                except OSError as e:
                    # A conversion holding the write lock, most likely.
                    raise Conflict(reason=f"{self.path.name} is in use: {e}") from e
                try:
                    self._plain = PlainReader.open(self.path)
                except (OSError, ValueError, subprocess.CalledProcessError) as e:
                    log.warning("IMAGES nbd-only path=%s error=%s", self.path, e)
            return self._backend, self._plain

    def payload(self, offset: int, length: int, compress: bool, scratch) -> Payload:
        """The range encoded: straight from the image file's pages where it
        is stored plain in one piece, else read into ``scratch`` (a reused
        buffer), where a chunk that compresses leaves only its zstd frame
        behind and one that does not is copied out once."""
        backend, plain = self._open()
        mapped = plain.view(offset, length) if plain is not None else None
        if mapped is not None:
            # Sent as it is (a view of the page cache) when it does not
            # compress: no copy at all.
            return protocol.encode_reply(mapped, compress)
        view = memoryview(scratch)[:length]
        if plain is not None:
            plain.read_into(offset, view, backend.read_into)
        else:
            backend.read_into(offset, view)
        payload = protocol.encode_reply(view, compress)
        if payload.encoding == "identity":
            payload = dataclasses.replace(payload, body=bytes(view))
        return payload

    def extents(self):
        return self.backend().extents()

    def close(self) -> None:
        with self._lock:
            backend, self._backend = self._backend, None
            plain, self._plain = self._plain, None
        if plain is not None:
            plain.close()
        if backend is not None:
            backend.close()


class Images:
    def __init__(self, root: Path, registry: Registry, executor: Executor) -> None:
        self.root = Path(root)
        self.registry = registry
        self.executor = executor
        self._imported: dict[tuple[str, str], _ImportedDisk] = {}
        self._lock = threading.Lock()
        # Reads held in memory at once, all images together: 8 MiB each
        # (plus its zstd copy) keeps V2P serving inside the server's budget
        # however many machines deploy at once.
        self.reads = asyncio.Semaphore(MAX_READS)
        self.cache = ReadCache(CACHE_BYTES)
        # Read buffers, reused: at most MAX_READS exist (the semaphore).
        self.scratch: list[bytearray] = []

    async def run(self, func, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)

    def entry(self, image: str) -> ImageEntry:
        for entry in catalogue(self.root, self.registry):
            if entry.name == image:
                return entry
        raise NotFound(what=f"image {image}")

    async def disk(self, image: str, disk: str):
        """An object with ``size``, async ``payload`` (a range, encoded) and
        async ``extents``."""
        entry = await self.run(self.entry, image)
        found = next((d for d in entry.disks if d.name == disk), None)
        if found is None:
            raise NotFound(what=f"disk {disk} of image {image}")
        if entry.kind == "capture":
            return _CaptureDisk(self, self.registry.get(image).disk(disk), found.size)
        return _AsyncImported(self, self._open_imported(image, disk))

    def _open_imported(self, image: str, disk: str) -> _ImportedDisk:
        key = (image, disk)
        with self._lock:
            if key not in self._imported:
                self._imported[key] = _ImportedDisk(self.root / image / f"{disk}.qcow2")
            return self._imported[key]

    def close_idle(self, max_idle: float) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [d for d in self._imported.values() if now - d.last_used > max_idle]
        for d in idle:
            d.close()

    def close_all(self) -> None:
        with self._lock:
            disks, self._imported = list(self._imported.values()), {}
        for d in disks:
            d.close()


class _CaptureDisk:
    def __init__(self, images: Images, diskio, size: int) -> None:
        self._images = images
        self._diskio = diskio
        self.size = size

    async def payload(self, offset: int, length: int, compress: bool) -> Payload:
        data = await self._diskio.read(offset, length)
        return await self._images.run(protocol.encode_reply, data, compress)

    async def extents(self):
        return await self._diskio.extents()


class _AsyncImported:
    def __init__(self, images: Images, disk: _ImportedDisk) -> None:
        self._images = images
        self._disk = disk
        self.size = disk.size

    async def payload(self, offset: int, length: int, compress: bool) -> Payload:
        protocol.check_bounds(offset, length, self.size)
        scratch = self._images.scratch.pop() if self._images.scratch else None
        if scratch is None:
            scratch = bytearray(MAX_CHUNK)
        try:
            return await self._images.run(
                self._disk.payload, offset, length, compress, scratch
            )
        finally:
            self._images.scratch.append(scratch)

    async def extents(self):
        return await self._images.run(self._disk.extents)


class ReadCache:
    """Recent reads of images, shared: machines of a lab deploying the same
    image at once ask for the same chunks within moments of each other, and
    each chunk is then read from storage (and compressed) once while they
    stay in step. A read in progress is awaited rather than repeated.
    Bounded by bytes; least recently used chunks go first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.storage_reads = 0
        self.shared_reads = 0
        self._entries: OrderedDict[tuple, protocol.Payload] = OrderedDict()
        self._pending: dict[tuple, asyncio.Future] = {}

    async def get(self, key: tuple, produce) -> protocol.Payload:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.shared_reads += 1
            return self._entries[key]
        pending = self._pending.get(key)
        if pending is not None:
            self.shared_reads += 1
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            payload = await produce()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no warning when nobody waited
            raise
        finally:
            del self._pending[key]
        self.storage_reads += 1
        future.set_result(payload)
        self._store(key, payload)
        return payload

    def _store(self, key: tuple, payload: protocol.Payload) -> None:
        size = len(payload.body)
        if size > self.max_bytes:
            return
        self._entries[key] = payload
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= len(old.body)

    def stats(self) -> dict:
        return {"storage": self.storage_reads, "shared": self.shared_reads}


IMAGES = web.AppKey("images", Images)


def setup(app: web.Application, root: Path, registry: Registry, executor) -> None:
    """Routes and lifecycle of the image endpoints (called by create_app)."""
    app[IMAGES] = Images(root, registry, executor)
    r = app.router
    r.add_view(f"{API}/images", CatalogueView)
    disk = f"{API}/images/{NAME % 'image'}/disks/{NAME % 'disk'}"
    r.add_view(disk, ImageDiskView)
    r.add_view(f"{disk}/extents", ImageExtentsView)
    app.on_startup.append(_start_janitor)
    app.on_cleanup.append(_cleanup)


async def _start_janitor(app: web.Application) -> None:
    async def janitor() -> None:
        while True:
            await asyncio.sleep(IDLE_CLOSE / 4)
            await asyncio.to_thread(app[IMAGES].close_idle, IDLE_CLOSE)

    app["images-janitor"] = asyncio.get_running_loop().create_task(janitor())


async def _cleanup(app: web.Application) -> None:
    app["images-janitor"].cancel()
    await asyncio.to_thread(app[IMAGES].close_all)


class _View(web.View):
    @property
    def images(self) -> Images:
        return self.request.app[IMAGES]

    async def image_disk(self):
        info = self.request.match_info
        return await self.images.disk(info["image"], info["disk"])


class CatalogueView(_View):
    async def get(self):
        images = self.images
        entries = await images.run(catalogue, images.root, images.registry)
        return web.json_response(
            {
                "images": [e.to_json() for e in entries],
                # chunks read from storage, and served again from memory
                "reads": images.cache.stats(),
            }
        )


class ImageExtentsView(_View):
    async def get(self):
        emap = await (await self.image_disk()).extents()
        return web.json_response(emap.to_json())


class ImageDiskView(_View):
    async def get(self):
        disk = await self.image_disk()
        headers = self.request.headers
        offset, length = protocol.parse_range(headers.get("Range"), disk.size)
        if length > MAX_CHUNK:
            raise protocol.RangeNotSatisfiable(
                reason=f"ranges are read {MAX_CHUNK} bytes at most"
            )
        compress = "zstd" in headers.get("Accept-Encoding", "")
        info = self.request.match_info
        key = (info["image"], info["disk"], offset, length, compress)

        async def produce() -> protocol.Payload:
            async with self.images.reads:
                return await disk.payload(offset, length, compress)

        payload = await self.images.cache.get(key, produce)
        reply = {
            "Content-Range": protocol.content_range(offset, length, disk.size),
            CHECKSUM_HEADER: payload.checksum,
        }
        if payload.encoding != "identity":
            reply["Content-Encoding"] = payload.encoding
        return await send_body(self.request, reply, payload.body)


async def send_body(request: web.Request, headers: dict, body) -> web.StreamResponse:
    """A 206 whose body goes out in slices of the payload itself. A whole
    8 MiB body in one write is copied three times on its way into TLS
    (joined with the headers, grown into OpenSSL's output buffer, read
    out of it), each copy a fresh allocation the size of the chunk; a
    slice is encrypted and sent while the next waits, in buffers small
    enough to be reused."""
    resp = web.StreamResponse(status=206, headers=headers)
    resp.content_length = len(body)
    await resp.prepare(request)
    view = memoryview(body)
    for start in range(0, len(view), SEND_SLICE):
        await resp.write(view[start : start + SEND_SLICE])
    await resp.write_eof()
    return resp
