"""A DomainSpec for a converted guest: the inventory sizes it, the guest's
firmware picks the loader, the pinned NICs give the MACs, and the user's
options override any of it."""

from __future__ import annotations

from dataclasses import dataclass

from converters import accel
from converters.domain import firmware, spec
from converters.domain.spec import DiskSpec, DomainSpec, NicSpec


class DomainError(Exception):
    """The host cannot provide what the domain needs (e.g. no OVMF)."""


@dataclass(frozen=True)
class DomainOptions:
    name: str = ""
    vcpus: int | None = None
    memory_mib: int | None = None
    network: str = "default"
    kvm: bool | None = None  # None: whatever accel.detect() finds


def spec_for(conversion, options: DomainOptions = DomainOptions()) -> DomainSpec:
    """`conversion` is a convert.Conversion (not imported: convert imports
    the fixups, and the domain needs none of them)."""
    source = conversion.source
    inv = source.inventory
    name = spec.safe_name(options.name or source.name)
    kvm = accel.detect().is_kvm if options.kvm is None else options.kvm
    ovmf = nvram = None
    if conversion.guest.firmware == "uefi":
        ovmf = firmware.find_ovmf()
        if ovmf is None:
            raise DomainError(
                "the guest boots with UEFI but no OVMF is installed here "
                "(Debian: apt-get install ovmf)"
            )
        nvram = source.directory / f"{name}_VARS.fd"
    formats = conversion.formats or ("qcow2",) * len(source.disks)
    nics = tuple(NicSpec(p.mac, p.name) for p in conversion.pins)
    if not nics and inv:
        nics = tuple(NicSpec(n.mac.lower(), n.name) for n in inv.nics)
    return DomainSpec(
        name=name,
        vcpus=spec.vcpus(options.vcpus, inv.cpus if inv else None),
        memory_mib=spec.memory_mib(options.memory_mib, inv.memory if inv else None),
        firmware=conversion.guest.firmware,
        disks=tuple(DiskSpec(d, f) for d, f in zip(source.disks, formats, strict=True)),
        nics=nics,
        kvm=kvm,
        network=options.network,
        ovmf=ovmf,
        nvram=nvram,
        description=f"{conversion.guest.name}, converted by ferry",
    )
