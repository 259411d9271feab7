"""The machine for a boot check of disks as they are, without converting
them first: the same DomainSpec `ferry convert` would write (domain.plan's
spec_for), built from what the session already says.

What a conversion would have found comes from the session instead: the
firmware and NIC pins from conversion.json when an earlier conversion wrote
one, else the capture's inventory (firmware, NICs and MACs); the formats
from qemu-img. This is how a capture can be checked before it is converted
(the proof that it does not boot on virtio yet) and a converted session
checked again later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from converters import convert
from converters.domain.plan import DomainOptions, spec_for
from converters.domain.spec import DomainSpec


@dataclass(frozen=True)
class _Guest:
    firmware: str
    name: str


@dataclass(frozen=True)
class _Pin:
    name: str
    mac: str


@dataclass(frozen=True)
class _AsIs:
    """What spec_for reads of a convert.Conversion."""

    source: convert.Source
    guest: _Guest
    pins: tuple[_Pin, ...]
    formats: tuple[str, ...]


def as_is(source: convert.Source, options: DomainOptions | None = None) -> DomainSpec:
    """Raises convert.ConversionError for a disk qemu-img cannot read and
    domain.plan.DomainError when the host lacks the firmware."""
    done = _conversion_record(source)
    inventory = source.inventory
    firmware = done.get("firmware") or (inventory.firmware if inventory else "")
    pins = tuple(_Pin(n["name"], n["mac"]) for n in done.get("nics", ()))
    formats = tuple(convert.image_format(d) for d in source.disks)
    guest = _Guest(firmware or "bios", done.get("guest", source.name))
    return spec_for(_AsIs(source, guest, pins, formats), options or DomainOptions())


def _conversion_record(source: convert.Source) -> dict:
    try:
        data = json.loads((source.directory / convert.RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
