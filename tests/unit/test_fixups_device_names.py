"""Device names that follow the hardware become UUID= before anything is
written; names the disks cannot resolve are reported, not guessed."""

from __future__ import annotations

import pytest

from converters.fixups import device_names
from converters.fixups.device_names import SourceDisk
from converters.fixups.guest import Filesystem
from tests.unit.fake_guest import FakeGuest

ROOT = Filesystem("/dev/sda1", "ext4", "11111111-aaaa", disk=0, partition=1)
SWAP = Filesystem("/dev/sda2", "swap", "22222222-bbbb", disk=0, partition=2)
DATA = Filesystem("/dev/sdb1", "xfs", "33333333-cccc", disk=1, partition=1)
LV = Filesystem("/dev/vg/root", "ext4", "44444444-dddd", lv="vg/root")
FSS = [ROOT, SWAP, DATA, LV]


@pytest.mark.parametrize(
    ("spec", "disks", "where"),
    [
        ("/dev/sda1", [], (0, 1)),
        ("/dev/sdb", [], (1, None)),
        ("/dev/hdb3", [], (1, 3)),
        ("/dev/sdaa1", [], (26, 1)),
        ("/dev/nvme0n1p2", [SourceDisk("nvme0n1")], (0, 2)),
        ("/dev/nvme1n1p1", [SourceDisk("sda"), SourceDisk("nvme1n1")], (1, 1)),
        ("/dev/nvme1n1p1", [SourceDisk("sda"), SourceDisk("sdb")], None),
        ("/dev/sdb1", [SourceDisk("nvme0n1"), SourceDisk("sdb")], (1, 1)),
        (
            "/dev/disk/by-id/ata-QEMU_HARDDISK_SER42-part3",
            [SourceDisk("sda", "SER42")],
            (0, 3),
        ),
        ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part1", [SourceDisk("sda")], None),
    ],
)
def test_locate_maps_source_names_to_disk_and_partition(spec, disks, where):
    assert device_names.locate(spec, disks) == where


@pytest.mark.parametrize(
    ("spec", "unstable"),
    [
        ("/dev/sda1", True),
        ("/dev/vdb", True),
        ("/dev/nvme0n1p1", True),
        ("/dev/disk/by-id/ata-X-part1", True),
        ("/dev/disk/by-path/pci-0:0:1f.2-ata-1", True),
        ("UUID=abc", False),
        ("LABEL=root", False),
        ("/dev/disk/by-uuid/abc", False),
        ("/dev/mapper/vg-root", False),
        ("/dev/vg/root", False),
        ("/dev/md0", False),
        ("tmpfs", False),
        ("none", False),
    ],
)
def test_only_hardware_names_are_unstable(spec, unstable):
    assert device_names.is_unstable(spec) is unstable


def test_fstab_crypttab_resume_and_grub_become_uuid(tmp_path):
    guest = FakeGuest(tmp_path, FSS)
    guest.put(
        "/etc/fstab",
        "# <file system> <mount point>\n"
        "/dev/sda1 / ext4 errors=remount-ro 0 1\n"
        "/dev/sda2   none swap sw 0 0\n"
        "/dev/vg/root /srv ext4 defaults 0 2\n"
        "proc /proc proc defaults 0 0\n",
    )
    guest.put("/etc/crypttab", "data /dev/sdb1 none luks\n")
    guest.put("/etc/initramfs-tools/conf.d/resume", "RESUME=/dev/sda2\n")
    guest.put("/etc/initramfs-tools/conf.d/other", "RESUME=none\n")
    guest.put(
        "/etc/default/grub",
        'GRUB_CMDLINE_LINUX="console=ttyS0 root=/dev/sda1 resume=/dev/sda2"\n'
        "GRUB_DISABLE_LINUX_UUID=true\n",
    )
    plan = device_names.plan(guest, [])
    assert plan.unresolved == []
    device_names.apply(guest, plan)
    assert guest.read("/etc/fstab").splitlines()[1:4] == [
        "UUID=11111111-aaaa / ext4 errors=remount-ro 0 1",
        "UUID=22222222-bbbb   none swap sw 0 0",
        "/dev/vg/root /srv ext4 defaults 0 2",
    ]
    assert guest.read("/etc/crypttab") == "data UUID=33333333-cccc none luks\n"
    assert (
        guest.read("/etc/initramfs-tools/conf.d/resume")
        == "RESUME=UUID=22222222-bbbb\n"
    )
    assert guest.read("/etc/initramfs-tools/conf.d/other") == "RESUME=none\n"
    grub = guest.read("/etc/default/grub")
    assert "root=UUID=11111111-aaaa resume=UUID=22222222-bbbb" in grub
    assert "GRUB_DISABLE_LINUX_UUID=false" in grub
    assert "GRUB_DISABLE_LINUX_UUID=true" not in grub


def test_unresolvable_names_are_reported_before_writing(tmp_path):
    guest = FakeGuest(tmp_path, [ROOT])
    fstab = "/dev/sda1 / ext4 defaults 0 1\n/dev/sdc1 /data ext4 defaults 0 2\n"
    guest.put("/etc/fstab", fstab)
    plan = device_names.plan(guest, [])
    assert plan.unresolved == ["/etc/fstab: /dev/sdc1"]
    assert guest.read("/etc/fstab") == fstab  # planning writes nothing


def test_already_stable_guest_needs_no_change(tmp_path):
    guest = FakeGuest(tmp_path, FSS)
    guest.put("/etc/fstab", "UUID=11111111-aaaa / ext4 defaults 0 1\n")
    guest.put("/etc/default/grub", 'GRUB_CMDLINE_LINUX="quiet"\n')
    plan = device_names.plan(guest, [])
    assert plan.files == {} and plan.renames == {}
