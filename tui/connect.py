"""Test a connection to ``ferry serve`` before anything is sent, and say
what went wrong in one sentence.

The wire has no "test connection" call of its own: a pinned TLS handshake
plus an authenticated ``GET /v1/status`` proves everything a capture needs
(address, certificate, secret) and writes nothing on the server.
"""

from __future__ import annotations

from dataclasses import dataclass

# A console test answers in seconds; the capture's own 120 s timeout is for
# a server busy flushing, not for an address that is wrong.
TEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerInfo:
    address: str
    fingerprint: str
    version: str
    free_bytes: int
    sessions: int


def check_server(text: str, timeout: float = TEST_TIMEOUT) -> ServerInfo:
    """Raises PairingError, LinkDown, CertificateMismatch, Unauthorized, ..."""
    from converters.wire.connection import WireClient
    from converters.wire.pairing import Pairing

    pairing = Pairing.parse(text)
    client = WireClient(pairing, timeout=timeout)
    try:
        status = client.server_status() or {}
    finally:
        client.close()
    return ServerInfo(
        address=pairing.address,
        fingerprint=pairing.fingerprint,
        version=str(status.get("version", "?")),
        free_bytes=int(status.get("free_bytes", 0)),
        sessions=len(status.get("sessions", ())),
    )


def address_of(text: str) -> str:
    """The server address in a pairing string, or the text itself."""
    from converters.wire.errors import PairingError
    from converters.wire.pairing import Pairing

    try:
        return Pairing.parse(text).address
    except PairingError:
        return text.strip() or "the server"


def explain(err: BaseException, server: str = "", prefix: str = "") -> str:
    """One sentence for the technician, naming the fix where there is one;
    errors of the engines (already one line) follow ``prefix``."""
    from converters.wire import errors

    where = f" at {address_of(server)}" if server else ""
    if isinstance(err, errors.PairingError):
        return f"The pairing string is not valid: {err}."
    if isinstance(err, errors.Unauthorized):
        return (
            f"The server{where} refused the secret in the pairing string: "
            "copy the pairing string that ferry serve prints again."
        )
    if isinstance(err, errors.CertificateMismatch):
        return (
            f"The server{where} is not the one paired with: its certificate "
            "does not match the fingerprint (wrong address, or someone in "
            "between)."
        )
    if isinstance(err, errors.LinkDown):
        reason = err.fields.get("reason", str(err))
        return (
            f"Cannot reach the server{where} ({_short(reason)}): check the "
            "address, the network and that ferry serve is running."
        )
    text = str(err) or type(err).__name__
    return prefix + text + ("" if text.endswith(".") else ".")


def _short(reason: object) -> str:
    """'GET /v1/status: [Errno 111] Connection refused' -> 'connection
    refused': the request line means nothing to the technician."""
    text = str(reason).rsplit(": ", 1)[-1]
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text[:1].lower() + text[1:]
