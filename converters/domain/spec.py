"""What the VM should be, as plain data: built from a conversion (the
inventory's CPUs, memory and NIC MACs, the guest's firmware) with the
user's overrides, and turned into libvirt XML (builder) or a QEMU command
line (qemu_cmdline)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from converters.domain import firmware as fw

DEFAULT_MEMORY_MIB = 2048
DEFAULT_VCPUS = 2
MIN_MEMORY_MIB = 512
# Physical machines often have far more memory than their VM needs at
# first boot; the VM gets what the machine had up to this cap unless the
# user asks (--memory). 16 GiB covers most servers' working sets.
MAX_DEFAULT_MEMORY_MIB = 16384
MAX_DEFAULT_VCPUS = 8


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    format: str = "qcow2"


@dataclass(frozen=True)
class NicSpec:
    mac: str
    guest_name: str = ""  # what the guest calls it (for humans)


@dataclass(frozen=True)
class DomainSpec:
    name: str
    vcpus: int
    memory_mib: int
    firmware: str  # "bios" or "uefi"
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...] = ()
    kvm: bool = True  # False: TCG (libvirt type='qemu')
    network: str = "default"  # libvirt network the NICs join
    boot_disk: int = 0
    ovmf: fw.Ovmf | None = None
    nvram: Path | None = None  # this VM's own copy of the UEFI variables
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.firmware == "uefi" and (self.ovmf is None or self.nvram is None):
            raise ValueError("a UEFI domain needs OVMF and an NVRAM file")


def safe_name(name: str) -> str:
    """A libvirt domain name that is also a good file name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-.")
    return cleaned or "ferry-vm"


def memory_mib(requested: int | None, inventory_bytes: int | None) -> int:
    if requested:
        return max(MIN_MEMORY_MIB, requested)
    if inventory_bytes:
        mib = -(-inventory_bytes // (1 << 20))
        return max(MIN_MEMORY_MIB, min(mib, MAX_DEFAULT_MEMORY_MIB))
    return DEFAULT_MEMORY_MIB


def vcpus(requested: int | None, inventory_cpus: int | None) -> int:
    if requested:
        return requested
    if inventory_cpus:
        return max(1, min(inventory_cpus, MAX_DEFAULT_VCPUS))
    return DEFAULT_VCPUS


def parse_memory(text: str) -> int:
    """'4G', '2048M', '2048' (MiB) -> MiB."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (try 4G or 2048M)")
    n, unit = int(m.group(1)), m.group(2).upper()
    return {"K": n // 1024, "": n, "M": n, "G": n * 1024, "T": n * 1024 * 1024}[unit]
