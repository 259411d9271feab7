"""The small parts of the UEFI deploy that read what the machine says: a
SATA disk's serial from its VPD page (it has no sysfs ``serial``, and a
lab's ``{serial}`` was empty), and the boot entries efibootmgr lists."""

from __future__ import annotations

from converters import deploy_fixups

LISTING = """BootCurrent: 0001
Timeout: 0 seconds
BootOrder: 0004,0001,0000,0002
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21)
Boot0001* UEFI QEMU DVD-ROM QM00005 \tPciRoot(0x0)/Pci(0x1f,0x2)/Sata(2,65535,0)
Boot0002  EFI Internal Shell\tFvVol(7cb8bdc9)/FvFile(7c04a583)
Boot0004* debian\tHD(2,GPT,1f0e,0x7f7800,0x40800)/File(\\EFI\\debian\\grubx64.efi)
"""


def test_efibootmgr_entries_are_read_with_their_labels():
    assert deploy_fixups._boot_entries(LISTING) == [
        ("0000", "UiApp"),
        ("0001", "UEFI QEMU DVD-ROM QM00005"),
        ("0002", "EFI Internal Shell"),
        ("0004", "debian"),
    ]


def _disk(tmp_path, name: str):
    device = tmp_path / "class/block" / name / "device"
    device.mkdir(parents=True)
    return device


def test_a_sata_disk_serial_comes_from_its_vpd_page(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy_fixups, "SYS", tmp_path)
    serial = b"  WD-WCC4N1234567"
    page = bytes([0, 0x80, 0, len(serial)]) + serial
    (_disk(tmp_path, "sda") / "vpd_pg80").write_bytes(page)
    assert deploy_fixups.disk_serial("sda") == "WD-WCC4N1234567"
    # NVMe and virtio disks say it in a file; no page and no file: empty
    (_disk(tmp_path, "nvme0n1") / "serial").write_text("S4EWNX0R123456\n")
    assert deploy_fixups.disk_serial("nvme0n1") == "S4EWNX0R123456"
    _disk(tmp_path, "sdb")
    assert deploy_fixups.disk_serial("sdb") == ""
