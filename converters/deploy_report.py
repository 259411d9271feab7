"""The deploy's side of the first-boot report: register the machine being
written with ``ferry serve`` over the paired, authenticated wire, and hand
the deployed system only what it needs to report once
(converters/first_boot_report.py installs it).

    register(pairing, hostname, image, macs)   -> Credential
    list_reports(pairing, image=None)          -> [SlotStatus]
"""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from converters.first_boot_report import Credential
from converters.wire.connection import PinnedHTTPSConnection, WireClient
from converters.wire.pairing import Pairing
from converters.wire.report_types import (
    REPORTS,
    Registration,
    Slot,
    SlotStatus,
)

TIMEOUT = 30.0


def spki_pin(der: bytes) -> str:
    """curl's ``--pinnedpubkey`` form of a certificate's public key:
    ``sha256//`` and the base64 of the SHA-256 of its DER SubjectPublicKeyInfo."""
    key = x509.load_der_x509_certificate(der).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def server_certificate(pairing: Pairing) -> bytes:
    """The server's certificate (DER), from a handshake that checked it
    against the pairing's fingerprint (CertificateMismatch otherwise)."""
    conn = PinnedHTTPSConnection(pairing, TIMEOUT)
    try:
        conn.connect()
        return conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()


def register(
    pairing: Pairing, hostname: str, image: str, macs: tuple[str, ...] = ()
) -> Credential:
    """A report slot for this machine on the server it was deployed from."""
    pin = spki_pin(server_certificate(pairing))
    reg = Registration(hostname, image, tuple(m.lower() for m in macs))
    client = WireClient(pairing, timeout=TIMEOUT)
    try:
        slot = Slot.from_json(client.request_json("POST", REPORTS, reg.to_json()))
    finally:
        client.close()
    return Credential(
        pairing.host, pairing.port, slot.id, slot.secret, pin, pairing.fingerprint
    )


def list_reports(pairing: Pairing, image: str | None = None) -> list[SlotStatus]:
    """Every machine the server expects a report from, waiting or up."""
    path = REPORTS + (f"?image={image}" if image else "")
    client = WireClient(pairing, timeout=TIMEOUT)
    try:
        reply = client.request_json("GET", path)
    finally:
        client.close()
    return [SlotStatus.from_json(obj) for obj in reply["reports"]]
