"""Errors of the wire, one small hierarchy shared by client and server.

The server turns an error into a status and a JSON body ``{"error": code,
"message": text}``; the client turns that body back into the same class, so
both sides raise and catch the same names.
"""

from __future__ import annotations


class WireError(Exception):
    """Base class. ``msg`` is a template of the keyword fields."""

    msg = "wire error: {reason}"
    status = 500
    code = "internal"

    def __init__(self, message: str | None = None, **fields: object) -> None:
        self.fields = fields
        if message is None:
            message = self.msg.format(**fields)
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


class BadRequest(WireError):
    msg = "bad request: {reason}"
    status = 400
    code = "bad-request"


class ChecksumMismatch(WireError):
    msg = (
        "checksum mismatch at offset {offset} length {length}: "
        "expected {expected}, got {actual}"
    )
    status = 400
    code = "checksum-mismatch"


class Unauthorized(WireError):
    msg = "unauthorized: {reason}"
    status = 401
    code = "unauthorized"


class NotFound(WireError):
    msg = "not found: {what}"
    status = 404
    code = "not-found"


class Conflict(WireError):
    msg = "conflict: {reason}"
    status = 409
    code = "conflict"


class Incomplete(WireError):
    msg = "disk {disk} is incomplete: {missing} bytes not committed"
    status = 409
    code = "incomplete"


class PayloadTooLarge(WireError):
    msg = "payload of {length} bytes is larger than the limit of {limit}"
    status = 413
    code = "too-large"


class RangeNotSatisfiable(WireError):
    msg = "range not satisfiable: {reason}"
    status = 416
    code = "bad-range"


class StorageFull(WireError):
    msg = "storage full: {reason}"
    status = 507
    code = "storage-full"


# Raised on the client side only.


class LinkDown(WireError):
    """The connection failed; the request may be retried after a backoff."""

    msg = "link down: {reason}"
    code = "link-down"


class CertificateMismatch(WireError):
    msg = (
        "server certificate {actual} does not match the pairing fingerprint "
        "{expected}: wrong server, or someone in between"
    )
    code = "certificate-mismatch"


class PairingError(WireError):
    msg = "bad pairing string: {reason}"
    code = "bad-pairing"


class TransferError(WireError):
    msg = "transfer failed: {reason}"
    code = "transfer-failed"


_BY_CODE = {
    cls.code: cls
    for cls in (
        BadRequest,
        ChecksumMismatch,
        Unauthorized,
        NotFound,
        Conflict,
        Incomplete,
        PayloadTooLarge,
        RangeNotSatisfiable,
        StorageFull,
    )
}


def from_reply(status: int, body: dict | None) -> WireError:
    """The error a server reply stands for (client side)."""
    body = body or {}
    code = body.get("error", "")
    message = body.get("message") or f"HTTP {status}"
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = next((c for c in _BY_CODE.values() if c.status == status), WireError)
    err = cls(message)
    err.status = status
    err.fields = {k: v for k, v in body.items() if k not in ("error", "message")}
    return err
