"""Which OVMF build to give a UEFI VM. Distributions install it in
different places; the non-secure-boot build is chosen because the fresh
variable store has no keys enrolled and converted guests may boot an
unsigned grub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# (code, variables template), most likely first.
CANDIDATES = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),  # Debian 12
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),  # Debian 11, Ubuntu
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),  # Fedora
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),
)


@dataclass(frozen=True)
class Ovmf:
    code: Path
    vars_template: Path


def find_ovmf() -> Ovmf | None:
    for code, template in CANDIDATES:
        if Path(code).is_file() and Path(template).is_file():
            return Ovmf(Path(code), Path(template))
    return None
