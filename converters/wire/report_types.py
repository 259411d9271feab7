"""What the first-boot report of a deployed machine says on the wire,
shared by the deploy (client), the deployed machine's script and
``ferry serve`` (wire/reports.py); no aiohttp here, the live side imports
it too.

    POST /v1/reports        Registration -> Slot (id + one-use secret)
    POST /v1/reports/ID     Report, with the slot's secret as bearer token
    GET  /v1/reports        every slot: SlotStatus
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass

from .errors import BadRequest, WireError

REPORTS = "/v1/reports"
# Slot ids are file names on the server and part of a URL path.
ID_RE = re.compile(r"^[a-f0-9]{16}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_NIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,14}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_MACS = 64
# A report is a few hundred bytes; anything larger is not one.
MAX_BODY = 4096
WAITING, UP = "waiting", "up"


class Forbidden(WireError):
    """The right secret for a report that may no longer be made."""

    msg = "forbidden: {reason}"
    status = 403
    code = "forbidden"


def report_path(slot_id: str) -> str:
    return f"{REPORTS}/{slot_id}"


def _text(obj: dict, key: str, pattern: re.Pattern, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise BadRequest(reason=f"{key} must be {what}, not {value!r:.80}")
    return value


@dataclass(frozen=True)
class Registration:
    """The deploy tells the server which machine will report, and from
    which image; the server answers a Slot."""

    hostname: str
    image: str
    macs: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"hostname": self.hostname, "image": self.image, "macs": self.macs}

    @classmethod
    def from_json(cls, obj: dict) -> Registration:
        macs = obj.get("macs", [])
        if not isinstance(macs, list) or len(macs) > MAX_MACS:
            raise BadRequest(reason=f"macs must be a list of at most {MAX_MACS}")
        for mac in macs:
            if not isinstance(mac, str) or not _MAC.match(mac):
                raise BadRequest(reason=f"not a MAC address: {mac!r:.40}")
        return cls(
            _text(obj, "hostname", _HOST, "a host name"),
            _text(obj, "image", _IMAGE, "an image name"),
            tuple(macs),
        )


@dataclass(frozen=True)
class Slot:
    """The server's answer to a Registration: where to report and the
    secret that may do it once (the server keeps only its hash)."""

    id: str
    secret: str

    @classmethod
    def from_json(cls, obj: dict) -> Slot:
        slot_id, secret = obj.get("id", ""), obj.get("secret", "")
        if not ID_RE.match(slot_id) or not isinstance(secret, str) or not secret:
            raise BadRequest(reason="the server answered no report slot")
        return cls(slot_id, secret)


@dataclass(frozen=True)
class Report:
    """What the deployed machine says on its first boot."""

    hostname: str
    nic: str
    mac: str
    addr: str
    boot_seconds: float

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> Report:
        addr = obj.get("addr")
        try:
            ipaddress.ip_address(addr if isinstance(addr, str) else "")
        except ValueError:
            reason = f"addr must be an IP address, not {addr!r:.60}"
            raise BadRequest(reason=reason) from None
        boot = obj.get("boot_seconds")
        if isinstance(boot, bool) or not isinstance(boot, (int, float)) or boot < 0:
            raise BadRequest(reason="boot_seconds must be a number of seconds")
        mac = obj.get("mac")
        lower = {"mac": mac.lower() if isinstance(mac, str) else mac}
        return cls(
            _text(obj, "hostname", _HOST, "a host name"),
            _text(obj, "nic", _NIC, "an interface name"),
            _text(lower, "mac", _MAC, "a MAC address"),
            addr,
            float(boot),
        )


@dataclass
class SlotStatus:
    """One expected machine: waiting since ``created_at``, or up since
    ``reported_at`` with what it said (``report``) and from where."""

    id: str
    hostname: str
    image: str
    macs: tuple[str, ...]
    created_at: float
    state: str = WAITING
    reported_at: float = 0.0
    report: Report | None = None
    peer: str = ""  # the address the report came from
    registered_by: str = ""  # the address the deploy registered from

    def to_json(self) -> dict:
        obj = asdict(self)
        obj["macs"] = list(self.macs)
        return obj

    @classmethod
    def from_json(cls, obj: dict) -> SlotStatus:
        report = obj.get("report")
        return cls(
            obj["id"],
            obj.get("hostname", ""),
            obj.get("image", ""),
            tuple(obj.get("macs", ())),
            float(obj.get("created_at", 0)),
            obj.get("state", WAITING),
            float(obj.get("reported_at", 0) or 0),
            Report(**report) if isinstance(report, dict) else None,
            obj.get("peer", ""),
            obj.get("registered_by", ""),
        )
