"""A static file server with HTTP Range support (aiohttp's FileResponse),
the web server the deploy bench's peers read their images from:
``python -m tests.bench.static_http FOLDER HOST PORT``."""

from __future__ import annotations

import sys

from aiohttp import web


def main() -> None:
    folder, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = web.Application()
    app.router.add_static("/", folder)
    web.run_app(app, host=host, port=port, print=lambda *_: None)


if __name__ == "__main__":
    main()
