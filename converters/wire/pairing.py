"""How the live side finds and trusts ``ferry serve``.

The server keeps a self-signed certificate and a secret in
``STORAGE/.ferry/``. The pairing string carries the address, the SHA-256
fingerprint of the certificate (DER) and the secret:

    ferry://HOST:PORT/?fp=SHA256HEX&token=SECRET

and the same as kernel command-line keys for unattended boots (the
fingerprint rides in the token so that the keys stay the ones DESIGN.md
names):

    ferry.server=HOST:PORT ferry.token=SECRET:SHA256HEX

The client pins the fingerprint instead of trusting a CA: a live image cannot
know the KVM host's certificate in advance, and the technician already
carries the pairing string from one screen to the other.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import PairingError
from .protocol import DEFAULT_PORT

SCHEME = "ferry"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
# Ten years: the certificate is pinned, not validated against a clock, and a
# KVM host's pairing should outlive the USB sticks printed with it.
CERT_DAYS = 3650


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class Pairing:
    host: str
    port: int
    fingerprint: str
    secret: str

    def __post_init__(self) -> None:
        if not _HEX64.match(self.fingerprint):
            raise PairingError(reason="fingerprint must be 64 lowercase hex digits")
        if not _SECRET.match(self.secret):
            raise PairingError(reason="token must be 16-128 URL-safe characters")
        if not 0 < self.port < 65536:
            raise PairingError(reason=f"port {self.port} out of range")

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}://{self.address}/?fp={self.fingerprint}&token={self.secret}"

    def kernel_keys(self) -> str:
        return (
            f"ferry.server={self.address} ferry.token={self.secret}:{self.fingerprint}"
        )

    @classmethod
    def parse(cls, text: str) -> Pairing:
        """A pairing string, or kernel keys ``ferry.server=... ferry.token=...``."""
        text = text.strip()
        if text.startswith("ferry.") or " ferry." in text:
            keys = dict(w.split("=", 1) for w in text.split() if "=" in w)
            try:
                return cls.from_kernel(keys["ferry.server"], keys["ferry.token"])
            except KeyError as e:
                raise PairingError(reason=f"missing {e.args[0]}") from None
        url = urlsplit(text)
        if url.scheme != SCHEME:
            raise PairingError(
                reason=f"expected {SCHEME}://HOST:PORT/?fp=...&token=..."
            )
        query = parse_qs(url.query)
        try:
            fp, secret = query["fp"][0].lower(), query["token"][0]
            host, port = url.hostname, url.port or DEFAULT_PORT
        except (KeyError, ValueError) as e:
            raise PairingError(reason=f"missing or bad {e}") from None
        if not host:
            raise PairingError(reason="no host")
        return cls(host, port, fp, secret)

    @classmethod
    def from_kernel(cls, server: str, token: str) -> Pairing:
        secret, sep, fp = token.rpartition(":")
        if not sep:
            raise PairingError(reason="ferry.token must be SECRET:FINGERPRINT")
        host, port = split_address(server)
        return cls(host, port, fp.lower(), secret)


def split_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` into a pair."""
    url = urlsplit(f"//{text}")
    try:
        port = url.port
    except ValueError as e:
        raise PairingError(reason=f"bad address {text!r}: {e}") from None
    if url.hostname is None:
        raise PairingError(reason=f"bad address {text!r}")
    return url.hostname, default_port if port is None else port


@dataclass(frozen=True)
class Identity:
    """What ``ferry serve`` keeps across restarts: certificate and secret."""

    cert_path: Path
    key_path: Path
    fingerprint: str
    secret: str

    def pairing(self, host: str, port: int) -> Pairing:
        return Pairing(host, port, self.fingerprint, self.secret)


def load_or_create_identity(directory: Path) -> Identity:
    """The server's identity in ``directory``, created on first use."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    secret_path = directory / "secret"
    if not (cert_path.exists() and key_path.exists()):
        cert, key = _self_signed()
        _write_private(key_path, key)
        _write_private(cert_path, cert)
    if not secret_path.exists():
        _write_private(secret_path, secrets.token_urlsafe(24).encode() + b"\n")
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    secret = secret_path.read_text().strip()
    return Identity(cert_path, key_path, fingerprint(der), secret)


def _self_signed() -> tuple[bytes, bytes]:
    # P-256: every TLS stack speaks it, and signing is cheap for a handshake
    # per client connection.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry serve")])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(socket.gethostname() or "localhost")]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def advertised_host(listen_host: str) -> str:
    """The address to print for a wildcard listen address: the one the
    default route leaves from (a UDP connect sends no packet)."""
    if listen_host not in ("", "0.0.0.0", "::"):
        return listen_host
    family = socket.AF_INET6 if listen_host == "::" else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()
