"""QEMU hardware profiles that differ the way real machines differ.

"physical" machines have an AHCI SATA disk and an e1000 NIC; "virtual" ones
virtio disk and NIC. The physical NIC sits in PCI slot 8 and the virtual one
in slot 3, so a moved machine's interface gets another predictable name
(ens8 vs ens3 on i440fx, enp0s8 on q35) as moving to other hardware does:
QEMU's default slots would name it ens3 everywhere and prove nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class Profile:
    name: str
    machine: str  # QEMU machine type
    firmware: str  # "bios" or "uefi"
    disk: str  # "ahci" or "virtio"
    nic_model: str
    nic_slot: int
    nic_name: str  # what Debian 12 names that NIC

    def with_firmware(self, firmware: str) -> Profile:
        """The virtual profile exists for both firmwares (q35 for UEFI)."""
        if firmware == self.firmware:
            return self
        machine = "q35" if firmware == "uefi" else "pc"
        nic_name = (
            f"enp0s{self.nic_slot}" if machine == "q35" else f"ens{self.nic_slot}"
        )
        return Profile(
            self.name,
            machine,
            firmware,
            self.disk,
            self.nic_model,
            self.nic_slot,
            nic_name,
        )

    def firmware_args(self, workdir: Path) -> list[str]:
        if self.firmware == "bios":
            return []
        # Each machine gets its own NVRAM, as each real machine has its own.
        vars_copy = workdir / "OVMF_VARS.fd"
        if not vars_copy.exists():
            shutil.copy(OVMF_VARS, vars_copy)
        return [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]

    def disk_args(self, index: int, path: Path, fmt: str, bootindex: int) -> list[str]:
        drive = f"disk{index}"
        args = ["-drive", f"if=none,id={drive},file={path},format={fmt},cache=unsafe"]
        if self.disk == "virtio":
            device = f"virtio-blk-pci,drive={drive},addr={4 + index:#x}"
        elif self.machine == "q35":  # the ICH9 AHCI controller q35 always has
            device = f"ide-hd,drive={drive},bus=ide.{index}"
        else:
            device = f"ide-hd,drive={drive},bus=ahci.{index}"
        return args + ["-device", f"{device},bootindex={bootindex}"]

    def controller_args(self) -> list[str]:
        if self.disk == "ahci" and self.machine == "pc":
            return ["-device", "ahci,id=ahci,addr=0x6"]
        return []

    def nic_args(self, mac: str, netdev: str) -> list[str]:
        return [
            "-netdev",
            netdev,
            "-device",
            f"{self.nic_model},netdev=net0,mac={mac},addr={self.nic_slot:#x}",
        ]


PROFILES = {
    p.name: p
    for p in [
        Profile("physical-bios", "pc", "bios", "ahci", "e1000", 8, "ens8"),
        Profile("physical-uefi", "q35", "uefi", "ahci", "e1000", 8, "enp0s8"),
        Profile("virtual", "pc", "bios", "virtio", "virtio-net-pci", 3, "ens3"),
    ]
}
