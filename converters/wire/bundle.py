"""``GET /v1/bundle``: ferry and its dependencies as wheels, for a running
server that live capture runs on (docs/live-capture.md). The operator puts
the wheels in ``STORAGE/.ferry/bundle`` (``python -m image.bundle``); the
server answers a tar of that folder, behind the same token and pinned
certificate as every other request, and ``bundle_install.py`` on the
running server fetches and installs it."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

from aiohttp import web

from .errors import NotFound
from .protocol import API

BUNDLE_DIR = Path(".ferry") / "bundle"
ROUTE = f"{API}/bundle"
BUNDLE = web.AppKey("bundle", Path)


def setup(app: web.Application, storage_dir: Path) -> None:
    app[BUNDLE] = Path(storage_dir) / BUNDLE_DIR
    app.router.add_get(ROUTE, _get)


def tar_of(folder: Path) -> bytes:
    """The wheels uncompressed in a tar (they are zip files already)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    return buf.getvalue()


async def _get(request: web.Request) -> web.Response:
    folder = request.app[BUNDLE]
    if not (folder / "requirements.txt").is_file():
        raise NotFound(
            what=f"bundle: this server has none in {folder} (python -m image.bundle)"
        )
    body = await asyncio.to_thread(tar_of, folder)
    return web.Response(body=body, content_type="application/x-tar")
