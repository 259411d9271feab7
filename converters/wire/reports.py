"""First-boot reports of deployed machines, on ``ferry serve``.

A deploy registers the machine it is writing (``POST /v1/reports``, with
the pairing token): the server makes a slot with an id and a fresh random
secret, keeps only the secret's SHA-256 and answers both. The deployed
system carries that secret, never the pairing token; on its first boot it
``POST``s its report to ``/v1/reports/ID`` with the secret as its bearer
token. That route takes that secret alone, compared in constant time, and
only while the slot is waiting: a second report with it is refused. Every
other route still needs the pairing token (server.py's auth middleware).

    STORAGE/.ferry/reports/ID.json    SlotStatus + the secret's hash (0600)

``GET /v1/reports[?image=NAME]`` lists every slot, waiting or up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path

from aiohttp import web

from .errors import BadRequest, PayloadTooLarge, Unauthorized
from .report_types import (
    MAX_BODY,
    REPORTS,
    UP,
    WAITING,
    Forbidden,
    Registration,
    Report,
    SlotStatus,
)
from .storage import IDENTITY_DIR

log = logging.getLogger(__name__)

REPORTS_DIR = Path(IDENTITY_DIR) / "reports"
# The route the auth middleware hands to authorize() instead of checking
# the pairing token.
REPORT_ROUTE = "ferry-first-boot-report"
STORE = web.AppKey("reports", "ReportStore")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ReportStore:
    """The slots, in memory and one small JSON file each. Marking a slot
    up happens in memory with no await between the check and the mark, so
    two reports with one secret cannot both pass."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.slots: dict[str, SlotStatus] = {}
        self._hashes: dict[str, bytes] = {}

    def load(self) -> None:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                obj = json.loads(path.read_text())
                slot = SlotStatus.from_json(obj)
                digest = bytes.fromhex(obj["secret_sha256"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("REPORT unreadable slot path=%s error=%s", path, e)
                continue
            self.slots[slot.id] = slot
            self._hashes[slot.id] = digest

    def register(self, reg: Registration, peer: str) -> tuple[SlotStatus, str]:
        slot_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        slot = SlotStatus(
            slot_id, reg.hostname, reg.image, reg.macs, time.time(),
            registered_by=peer,
        )  # fmt: skip
        self.slots[slot_id] = slot
        self._hashes[slot_id] = _digest(secret)
        return slot, secret

    def authorize(self, slot_id: str, token: str) -> SlotStatus:
        """The slot ``token`` may report for; 401 for an unknown id or a
        wrong secret (the same answer for both), 403 once it reported."""
        expected = self._hashes.get(slot_id)
        # compare_digest on hashes of equal length: the time taken tells
        # nothing about the secret, nor whether the id exists.
        ok = hmac.compare_digest(_digest(token), expected or b"\0" * 32)
        if expected is None or not ok:
            raise Unauthorized(reason="wrong or missing report secret")
        slot = self.slots[slot_id]
        if slot.state != WAITING:
            raise Forbidden(
                reason=f"report {slot_id} was made already; its secret works once"
            )
        return slot

    def record(self, slot_id: str, report: Report, peer: str) -> SlotStatus:
        slot = self.slots[slot_id]
        if slot.state != WAITING:  # another request got there first
            raise Forbidden(
                reason=f"report {slot_id} was made already; its secret works once"
            )
        slot.state, slot.reported_at = UP, time.time()
        slot.report, slot.peer = report, peer
        return slot

    def save(self, slot: SlotStatus) -> None:
        obj = slot.to_json()
        obj["secret_sha256"] = self._hashes[slot.id].hex()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{slot.id}.json"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def listing(self, image: str | None = None) -> list[SlotStatus]:
        slots = sorted(self.slots.values(), key=lambda s: (s.created_at, s.id))
        return [s for s in slots if image is None or s.image == image]


def setup(app: web.Application, storage_dir: Path) -> None:
    store = ReportStore(Path(storage_dir) / REPORTS_DIR)
    store.load()
    app[STORE] = store
    app.router.add_post(REPORTS, _register)
    app.router.add_get(REPORTS, _list)
    app.router.add_post(f"{REPORTS}/{{id:[a-f0-9]{{16}}}}", _report, name=REPORT_ROUTE)


def is_report(request: web.Request) -> bool:
    """The one route that takes a slot's secret instead of the token."""
    route = request.match_info.route
    return request.method == "POST" and getattr(route, "name", None) == REPORT_ROUTE


def authorize(request: web.Request, token: str) -> None:
    request.app[STORE].authorize(request.match_info["id"], token)


async def _json(request: web.Request) -> dict:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(length=request.content_length, limit=MAX_BODY)
    try:
        body = json.loads(await request.content.read(MAX_BODY + 1) or b"null")
    except ValueError as e:
        raise BadRequest(reason=f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest(reason="body must be a JSON object")
    return body


async def _register(request: web.Request) -> web.Response:
    reg = Registration.from_json(await _json(request))
    store = request.app[STORE]
    slot, secret = store.register(reg, request.remote or "")
    await asyncio.to_thread(store.save, slot)
    log.info(
        "REPORT expect id=%s host=%s image=%s macs=%s from=%s",
        slot.id, slot.hostname, slot.image, ",".join(slot.macs) or "-",
        slot.registered_by,
    )  # fmt: skip
    return web.json_response({"id": slot.id, "secret": secret}, status=201)


async def _report(request: web.Request) -> web.Response:
    slot_id = request.match_info["id"]
    # Checked before the slot is touched: a malformed report leaves it
    # waiting, and its secret still good.
    report = Report.from_json(await _json(request))
    store = request.app[STORE]
    slot = store.record(slot_id, report, request.remote or "")
    await asyncio.to_thread(store.save, slot)
    log.info(
        "REPORT up id=%s host=%s nic=%s mac=%s addr=%s boot=%.1fs image=%s peer=%s",
        slot.id, report.hostname, report.nic, report.mac, report.addr,
        report.boot_seconds, slot.image, slot.peer,
    )  # fmt: skip
    return web.json_response(slot.to_json())


async def _list(request: web.Request) -> web.Response:
    image = request.query.get("image")
    slots = request.app[STORE].listing(image)
    return web.json_response({"reports": [s.to_json() for s in slots]})


__all__ = ["REPORT_ROUTE", "ReportStore", "authorize", "is_report", "setup"]
