"""grub's regenerated configuration must boot by stable names, and a UEFI
guest must have the removable-media loader a fresh NVRAM boots."""

from __future__ import annotations

import pytest

from converters.fixups import bootloader
from converters.fixups.guest import FixupError, Mount
from converters.fixups.inspect import GuestInfo
from tests.unit.fake_guest import FakeGuest

CFG = """menuentry 'Debian' {{
        linux   /boot/vmlinuz-6.1.0-9-amd64 root={root} ro console=ttyS0
        initrd  /boot/initrd.img-6.1.0-9-amd64
}}
"""


def test_grub_config_must_not_name_hardware():
    bootloader.verify_grub(CFG.format(root="UUID=abc"), "grub.cfg")
    bootloader.verify_grub(CFG.format(root="/dev/mapper/vg-root"), "grub.cfg")
    with pytest.raises(FixupError, match="root=/dev/sda1"):
        bootloader.verify_grub(CFG.format(root="/dev/sda1"), "grub.cfg")
    with pytest.raises(FixupError, match="no kernel entries"):
        bootloader.verify_grub("set timeout=5\n", "grub.cfg")


def uefi_info(loaders) -> GuestInfo:
    return GuestInfo(
        "debian", "debian", "12", "Debian 12", "h", (), "dracut", None, "uefi",
        "/dev/sda3", esp="/dev/sda1", efi_loaders=tuple(loaders),
        mounts=(Mount("/dev/sda3", "/"), Mount("/dev/sda1", "/boot/efi")),
    )  # fmt: skip


def test_fallback_loader_is_made_from_shim_with_its_companions(tmp_path):
    guest = FakeGuest(tmp_path)
    for name in ("shimx64.efi", "grubx64.efi", "mmx64.efi", "grub.cfg"):
        guest.put(f"/boot/efi/EFI/debian/{name}", name)
    loaders = [
        f"/boot/efi/EFI/debian/{n}" for n in ("grubx64.efi", "mmx64.efi", "shimx64.efi")
    ]
    did = bootloader.ensure_uefi_fallback(guest, uefi_info(loaders))
    assert "copied from /boot/efi/EFI/debian/shimx64.efi" in did
    assert guest.read("/boot/efi/EFI/BOOT/BOOTX64.EFI") == "shimx64.efi"
    assert guest.read("/boot/efi/EFI/BOOT/grubx64.efi") == "grubx64.efi"
    assert guest.read("/boot/efi/EFI/BOOT/grub.cfg") == "grub.cfg"


def test_existing_fallback_loader_is_kept(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put("/boot/efi/EFI/BOOT/BOOTX64.EFI", "mine")
    did = bootloader.ensure_uefi_fallback(guest, uefi_info([]))
    assert "already present" in did
    assert guest.read("/boot/efi/EFI/BOOT/BOOTX64.EFI") == "mine"


def test_no_loader_to_copy_is_an_error(tmp_path):
    with pytest.raises(FixupError, match="no EFI/BOOT/BOOTX64.EFI"):
        bootloader.ensure_uefi_fallback(FakeGuest(tmp_path), uefi_info([]))
