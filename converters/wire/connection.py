"""One client connection to ``ferry serve``: pinned TLS, keep-alive, one
method per request of docs/protocol.md.

http.client in threads rather than an event loop: every costly step of a
request (reading the source, sha256, zstd, TLS encryption, the socket
write) releases the GIL, so a few threads each with its own connection use
both cores of a small live machine; an event loop would do the TLS on one.

Transport failures become ``LinkDown`` (the caller retries after a
backoff); a server error reply becomes the matching ``WireError``.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass

from converters.extents import ExtentMap

from . import errors, protocol
from .errors import BadRequest, CertificateMismatch, LinkDown
from .pairing import Pairing, fingerprint
from .protocol import CHECKSUM_HEADER, Payload
from .ranges import RangeSet

# Long enough for a server that flushes a large batch before answering
# PATCH flush; a link that stays silent this long is down.
TIMEOUT = 120.0
USER_AGENT = "ferry-wire/1"


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Checks the certificate's SHA-256 against the pairing before anything,
    the token included, is sent."""

    def __init__(self, pairing: Pairing, timeout: float) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # No CA can vouch for a self-signed certificate: the pin does.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(pairing.host, pairing.port, timeout=timeout, context=ctx)
        self._expected = pairing.fingerprint

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        actual = fingerprint(self.sock.getpeercert(binary_form=True))
        if actual != self._expected:
            self.close()
            raise CertificateMismatch(expected=self._expected, actual=actual)


def _read_into(resp: http.client.HTTPResponse, buf) -> memoryview:
    view = memoryview(buf)[: resp.length]
    if len(view) != resp.length:
        raise http.client.HTTPException(f"a body of {resp.length} bytes is too long")
    pos = 0
    while pos < len(view):
        n = resp.readinto(view[pos:])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:pos]), len(view) - pos)
        pos += n
    return view


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    data: bytes | memoryview

    def json(self):
        return json.loads(self.data) if self.data else None


@dataclass
class DiskStatus:
    complete: bool
    error: str | None
    committed: RangeSet
    inflight: RangeSet

    @classmethod
    def from_json(cls, obj: dict) -> DiskStatus:
        return cls(
            bool(obj["complete"]),
            obj.get("error"),
            RangeSet.from_json(obj.get("committed", [])),
            RangeSet.from_json(obj.get("inflight", [])),
        )


class WireClient:
    def __init__(self, pairing: Pairing, *, timeout: float = TIMEOUT) -> None:
        self.pairing = pairing
        self.timeout = timeout
        self._conn: PinnedHTTPSConnection | None = None
        self._auth = f"Bearer {pairing.secret}"

    def request(
        self, method: str, path: str, body=None, headers=None, *, into=None
    ) -> Reply:
        """With ``into(headers, length)`` returning a writable buffer of at
        least ``length`` bytes, a successful reply's body is read into it
        (``Reply.data`` is then a view of it): no allocation per reply."""
        hdrs = {"Authorization": self._auth, "User-Agent": USER_AGENT}
        hdrs.update(headers or {})
        if body is not None and "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        try:
            if self._conn is None:
                self._conn = PinnedHTTPSConnection(self.pairing, self.timeout)
            self._conn.request(method, path, body=body, headers=hdrs)
            resp = self._conn.getresponse()
            if into is None or resp.status >= 400 or resp.length is None:
                data = resp.read()
            else:
                data = _read_into(resp, into(resp.headers, resp.length))
        except CertificateMismatch:
            self.close()
            raise
        except http.client.InvalidURL as e:
            raise BadRequest(reason=str(e)) from None
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise LinkDown(reason=f"{method} {path}: {e or type(e).__name__}") from e
        if resp.will_close:
            self.close()
        reply = Reply(resp.status, resp.headers, data)
        if resp.status >= 400:
            try:
                obj = reply.json()
            except ValueError:
                obj = None
            raise errors.from_reply(resp.status, obj if isinstance(obj, dict) else None)
        return reply

    def request_json(self, method: str, path: str, obj=None):
        body = None if obj is None else json.dumps(obj).encode()
        headers = {"Content-Type": "application/json"} if body else None
        return self.request(method, path, body, headers).json()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # The protocol, one method per request.

    def server_status(self) -> dict:
        return self.request_json("GET", f"{protocol.API}/status")

    def open_session(self, name: str, inventory: dict, maps: dict[str, ExtentMap]):
        disks = [
            {"name": disk, "size": emap.size, "map": emap.to_json()}
            for disk, emap in maps.items()
        ]
        body = {"inventory": inventory, "disks": disks}
        return self.request_json("PUT", protocol.session_path(name), body)

    def session(self, name: str) -> dict:
        return self.request_json("GET", protocol.session_path(name))

    def disk_status(self, session: str, disk: str) -> DiskStatus:
        path = protocol.disk_path(session, disk) + "/status"
        return DiskStatus.from_json(self.request_json("GET", path))

    def put(self, session: str, disk: str, offset: int, payload: Payload, body=None):
        """Send ``payload``; ``body`` may replace its bytes by an iterable of
        slices (bandwidth limit) of the same total length."""
        headers = {
            "Content-Range": protocol.content_range(offset, payload.length),
            "Content-Length": str(len(payload.body)),
            "Content-Type": "application/octet-stream",
            CHECKSUM_HEADER: payload.checksum,
        }
        if payload.encoding != "identity":
            headers["Content-Encoding"] = payload.encoding
        path = protocol.disk_path(session, disk)
        self.request("PUT", path, payload.body if body is None else body, headers)

    def zero(self, session: str, disk: str, offset: int, length: int) -> None:
        op = {"op": "zero", "offset": offset, "size": length}
        self.request_json("PATCH", protocol.disk_path(session, disk), op)

    def flush(self, session: str, disk: str) -> None:
        self.request_json("PATCH", protocol.disk_path(session, disk), {"op": "flush"})

    def complete(self, session: str, disk: str) -> dict:
        op = {"op": "complete"}
        return self.request_json("PATCH", protocol.disk_path(session, disk), op)

    def read(self, session: str, disk: str, offset: int, length: int) -> bytes:
        """``length`` bytes (at most ``MAX_CHUNK``) of a disk, checked."""
        headers = {
            "Range": protocol.range_header(offset, length),
            "Accept-Encoding": "zstd",
        }
        reply = self.request("GET", protocol.disk_path(session, disk), None, headers)
        encoding = reply.headers.get("Content-Encoding", "identity")
        data = protocol.decode(reply.data, encoding, length)
        protocol.verify(data, reply.headers.get(CHECKSUM_HEADER, ""), offset)
        return data

    def extents(self, session: str, disk: str) -> ExtentMap:
        path = protocol.disk_path(session, disk) + "/extents"
        return ExtentMap.from_json(self.request_json("GET", path))
