"""The receiving side of the wire: an aiohttp application.

One view class per resource, methods named after verbs (docs/protocol.md
lists them). Authentication is a middleware that runs before any handler,
so a request with a wrong secret is answered 401 before anything is looked
up, let alone created.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

import converters

from . import autoconvert, bundle, images, protocol, reports, storage
from .errors import BadRequest, PayloadTooLarge, Unauthorized, WireError
from .pairing import Identity
from .protocol import API, BODY_SLACK, CHECKSUM_HEADER, MAX_CHUNK
from .sessions import BODY_SIZE, Registry

log = logging.getLogger(__name__)

NAME = r"{%s:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"
SHUTDOWN_TIMEOUT = 3.0


@dataclass
class Settings:
    # Storage operations in flight for the whole server; sessions queue here
    # in arrival order, which shares the storage fairly between them.
    io_threads: int = 8
    # Disks idle this long flush, journal and end their qemu-nbd.
    idle_close: float = 120.0
    janitor_interval: float = 15.0
    # Convert each machine capture when it completes (autoconvert.py).
    convert: bool = True
    # ... and boot each converted VM once to check it (boot_check.py).
    check_boot: bool = False
    check_boot_timeout: float | None = None  # None: boot_check's default


@dataclass
class State:
    storage: Path
    registry: Registry
    executor: ThreadPoolExecutor
    settings: Settings


STATE = web.AppKey("state", State)


def create_app(storage_dir: Path, secret: str, settings: Settings | None = None):
    """The application; ``secret`` is what clients send as Bearer token."""
    settings = settings or Settings()
    storage_dir = Path(storage_dir)
    executor = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="ferry-io")
    state = State(storage_dir, Registry(storage_dir, executor), executor, settings)
    app = web.Application(
        middlewares=[_errors, _auth(secret.encode())],
        # Session bodies carry extent maps: a fragmented filesystem's map
        # is a few MiB of JSON. DATA bodies are streamed, not bounded here.
        client_max_size=64 << 20,
        # Request bodies are read as they come: the PUT handler decodes zstd
        # itself, after the checksum header told it what to expect.
        handler_args={"auto_decompress": False, "read_bufsize": 1 << 20},
    )
    app[STATE] = state
    r = app.router
    r.add_view(f"{API}/status", StatusView)
    r.add_view(f"{API}/sessions/{NAME % 'session'}", SessionView)
    disk = f"{API}/sessions/{NAME % 'session'}/disks/{NAME % 'disk'}"
    r.add_view(disk, DiskView)
    r.add_view(f"{disk}/status", DiskStatusView)
    r.add_view(f"{disk}/extents", ExtentsView)
    images.setup(app, storage_dir, state.registry, executor)
    bundle.setup(app, storage_dir)
    reports.setup(app, storage_dir)
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    autoconvert.install(
        app,
        storage_dir,
        settings.convert,
        settings.check_boot,
        settings.check_boot_timeout,
    )
    return app


def ssl_context(identity: Identity) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    return ctx


async def _startup(app: web.Application) -> None:
    state = app[STATE]
    await asyncio.to_thread(state.registry.load_all)
    app["janitor"] = asyncio.get_running_loop().create_task(_janitor(state))


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    app["janitor"].cancel()
    await state.registry.close_all()
    state.executor.shutdown(wait=True)


async def _janitor(state: State) -> None:
    while True:
        await asyncio.sleep(state.settings.janitor_interval)
        for session in list(state.registry.sessions.values()):
            try:
                await session.close_idle(state.settings.idle_close)
            except Exception:
                log.exception("JANITOR failed session=%s", session.name)


def _auth(secret: bytes):
    @web.middleware
    async def auth(request: web.Request, handler):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if reports.is_report(request):
            # A deployed machine's first-boot report: its slot's one-use
            # secret, never the pairing token (reports.py).
            if scheme.lower() != "bearer":
                raise Unauthorized(reason="wrong or missing report secret")
            try:
                reports.authorize(request, token.strip())
            except WireError as e:
                log.warning(
                    "AUTH denied report peer=%s path=%s: %s",
                    request.remote,
                    request.path,
                    e,
                )
                raise
            return await handler(request)
        # compare_digest: the time taken does not tell how much of a guess
        # was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), secret
        ):
            log.warning("AUTH denied peer=%s path=%s", request.remote, request.path)
            raise Unauthorized(reason="wrong or missing token")
        return await handler(request)

    return auth


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except WireError as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        body = {"error": e.code, "message": str(e)}
        body.update({k: v for k, v in e.fields.items() if isinstance(v, int)})
        return web.json_response(body, status=e.status, headers=headers)
    except OSError as e:
        log.exception("ERROR %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal", "message": f"storage error: {e}"}, status=500
        )


class _View(web.View):
    @property
    def state(self) -> State:
        return self.request.app[STATE]

    def session(self):
        return self.state.registry.get(self.request.match_info["session"])

    def disk(self):
        return self.session().disk(self.request.match_info["disk"])

    async def json_body(self) -> dict:
        try:
            body = await self.request.json()
        except ValueError as e:
            raise BadRequest(reason=f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest(reason="body must be a JSON object")
        return body


class StatusView(_View):
    async def get(self):
        registry = self.state.registry
        return web.json_response(
            {
                "version": converters.__version__,
                "free_bytes": storage.free_bytes(self.state.storage),
                "reserved_bytes": registry.reserved(),
                "sessions": [
                    autoconvert.session_status(s) for s in registry.sessions.values()
                ],
            }
        )


class SessionView(_View):
    async def get(self):
        return web.json_response(autoconvert.session_status(self.session()))

    async def put(self):
        body = await self.json_body()
        name = self.request.match_info["session"]
        session, created = await self.state.registry.open(
            name, body, self.request.remote or ""
        )
        return web.json_response(session.status(), status=201 if created else 200)


class DiskStatusView(_View):
    async def get(self):
        return web.json_response(self.disk().status())


class ExtentsView(_View):
    async def get(self):
        emap = await self.disk().extents()
        return web.json_response(emap.to_json())


class DiskView(_View):
    async def put(self):
        request = self.request
        session, disk = self.session(), self.disk()
        offset, length = protocol.parse_content_range(
            request.headers.get("Content-Range")
        )
        if length > MAX_CHUNK:
            raise PayloadTooLarge(length=length, limit=MAX_CHUNK)
        size = request.content_length
        if size is None:
            raise BadRequest(reason="Content-Length is required")
        if size > length + BODY_SLACK:
            raise PayloadTooLarge(length=size, limit=length + BODY_SLACK)
        digest = request.headers.get(CHECKSUM_HEADER)
        if not digest:
            raise BadRequest(reason=f"{CHECKSUM_HEADER} is required")
        protocol.checksum_algorithm(digest)  # before a byte of the body is read
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        async with session.buffers.get() as buf:
            view = memoryview(buf)
            body = await _read_body(request, view[:size])
            out = view[BODY_SIZE : BODY_SIZE + length]
            await disk.write(offset, length, body, encoding, digest, out)
        return web.Response(status=204)

    async def patch(self):
        body = await self.json_body()
        disk = self.disk()
        op = body.get("op")
        if op == "zero":
            try:
                offset, length = int(body["offset"]), int(body["size"])
            except (KeyError, TypeError, ValueError):
                raise BadRequest(reason="zero needs integer offset and size") from None
            await disk.zero(offset, length)
        elif op == "flush":
            await disk.flush()
        elif op == "complete":
            await disk.complete()
            autoconvert.disk_completed(self.request.app, self.session())
            return web.json_response(disk.status())
        else:
            raise BadRequest(reason=f"unknown op {op!r}")
        return web.Response(status=204)

    async def get(self):
        request = self.request
        session, disk = self.session(), self.disk()
        offset, length = protocol.parse_range(
            request.headers.get("Range"), disk.record.size
        )
        if length > MAX_CHUNK:
            raise protocol.RangeNotSatisfiable(
                reason=f"ranges are read {MAX_CHUNK} bytes at most"
            )
        compress = "zstd" in request.headers.get("Accept-Encoding", "")
        async with session.buffers.get():
            data = await disk.read(offset, length)
            loop = asyncio.get_running_loop()
            payload = await loop.run_in_executor(
                self.state.executor, protocol.encode_reply, data, compress
            )
        headers = {
            "Content-Range": protocol.content_range(offset, length, disk.record.size),
            CHECKSUM_HEADER: payload.checksum,
        }
        if payload.encoding != "identity":
            headers["Content-Encoding"] = payload.encoding
        return web.Response(status=206, body=bytes(payload.body), headers=headers)


async def _read_body(request: web.Request, view: memoryview) -> memoryview:
    """The body, into a buffer of the session's pool."""
    size = len(view)
    pos = 0
    async for chunk in request.content.iter_any():
        end = pos + len(chunk)
        if end > size:
            raise BadRequest(reason="body longer than Content-Length")
        view[pos:end] = chunk
        pos = end
    if pos != size:
        raise BadRequest(reason=f"body ended after {pos} of {size} bytes")
    return view


async def run(
    storage_dir: Path,
    identity: Identity,
    host: str,
    port: int,
    *,
    settings: Settings | None = None,
    ready=None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set; ``ready(port)`` once listening."""
    protocol.bound_heap()
    app = create_app(storage_dir, identity.secret, settings)
    # Requests still being received when a stop comes get this long, then
    # are cancelled (their ranges were never acknowledged): a stop should
    # not wait for clients that are themselves waiting on the server.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context(identity))
    await site.start()
    bound = runner.addresses[0][1]
    log.info("LISTEN host=%s port=%d storage=%s", host, bound, storage_dir)
    if ready:
        ready(bound)
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
