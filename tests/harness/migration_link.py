"""A slow link between two QEMUs on one host: a unix-socket relay that
carries the migration stream at a fixed rate.

`max-bandwidth` alone does not make a loopback socket behave like a real
link: QEMU lifts its rate limit for the stop-and-copy
(`qemu_file_set_rate_limit(s->to_dst_file, INT64_MAX)` in
migration_completion, QEMU 7.2), so the last dirty pages would cross at
memory speed and every downtime would look tiny. Through this relay the
final copy takes as long as it would on the wire, so downtimes mean
something. (`tc` with `tbf` could shape a veth pair instead, but that needs
network namespaces; a relay needs nothing.)"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 64 * 1024  # 2 ms of a 32 MiB/s link: pacing stays smooth


@dataclass
class Link:
    """Relay `listen` -> `target` (unix socket paths) at `rate` bytes/s in
    each direction; `carried` counts the bytes that crossed."""

    listen: Path
    target: Path
    rate: float
    carried: int = 0
    _server: socket.socket | None = field(default=None, repr=False)
    _closing: bool = field(default=False, repr=False)
    _socks: list[socket.socket] = field(default_factory=list, repr=False)

    @property
    def uri(self) -> str:
        return f"unix:{self.listen}"

    def start(self) -> Link:
        self.listen.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.listen))
        self._server.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closing:
            try:
                near, _ = self._server.accept()
            except OSError:
                return
            far = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                far.connect(str(self.target))
            except OSError:
                near.close()
                continue
            self._socks += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        start, sent = time.monotonic(), 0
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
                sent += len(data)
                self.carried += len(data)
                # Token bucket with no burst: never ahead of rate * elapsed.
                ahead = sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
                elif ahead < -0.1:  # idle link: do not bank credit
                    start, sent = time.monotonic(), 0
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        for s in [self._server, *self._socks]:
            if s is not None:
                s.close()
        self.listen.unlink(missing_ok=True)

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
