"""Fixups beyond the first disk: a system whose fstab and crypttab name
partitions of its second disk by kernel name (/dev/sdb1, as the VM called
them) gets them rewritten to the UUIDs of what is on the second target
disk, and the second disk's filesystems are mounted by the chroot as its
fstab says; without the second disk they cannot be resolved (the negative
control). Two loop devices stand for the target disks, as deployed."""

from __future__ import annotations

import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_deploy_write import loop_device

from converters.fixups import chroot_backend, device_names
from converters.fixups.device_names import SourceDisk

MiB = 1 << 20
FSTAB = """\
/dev/sda1 / ext4 errors=remount-ro 0 1
/dev/sdb1 /srv/data ext4 defaults 0 2
/dev/sdb2 none swap sw 0 0
"""
CRYPTTAB = "vault /dev/sdb3 none luks\n"


def run(*argv, **kw) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, **kw
    ).stdout


@contextmanager
def window(dev: str, start_mib: int, size_mib: int):
    """A loop device over one partition (this kernel makes no partition
    nodes for loop devices)."""
    node = run(
        "losetup", "-f", "--show", "--offset", start_mib * MiB,
        "--sizelimit", size_mib * MiB, dev,
    ).strip()  # fmt: skip
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], check=False)


def blkid(node: str, tag: str) -> str:
    return run("blkid", "-p", "-s", tag, "-o", "value", node).strip()


@pytest.fixture
def two_disks(tmp_path):
    """The two disks of a deployed two-disk system, on loop devices: the
    first with the root filesystem, the second with /srv/data, swap and a
    LUKS container. Yields the devices and the second disk's UUIDs."""
    first, second = tmp_path / "sda.img", tmp_path / "sdb.img"
    for disk in (first, second):
        run("truncate", "-s", 64 * MiB, disk)
    run("sfdisk", "-q", first, input="label: dos\n1MiB,,L\n")
    run("sfdisk", "-q", second,
        input="label: dos\n1MiB,24MiB,L\n25MiB,8MiB,S\n33MiB,,L\n")  # fmt: skip
    uuids = {}
    with loop_device(first) as sda, loop_device(second) as sdb:
        with window(sda, 1, 63) as root:
            run("mkfs.ext4", "-q", "-F", root)
            with tempfile.TemporaryDirectory() as mnt:
                run("mount", root, mnt)
                try:
                    etc = Path(mnt) / "etc"
                    etc.mkdir()
                    (etc / "fstab").write_text(FSTAB)
                    (etc / "crypttab").write_text(CRYPTTAB)
                finally:
                    run("umount", mnt)
        with window(sdb, 1, 24) as data:
            run("mkfs.ext4", "-q", "-F", "-L", "data", data)
            with tempfile.TemporaryDirectory() as mnt:
                run("mount", data, mnt)
                try:
                    (Path(mnt) / "on-the-second-disk").write_text("yes\n")
                finally:
                    run("umount", mnt)
            uuids["/dev/sdb1"] = blkid(data, "UUID")
        with window(sdb, 25, 8) as swap:
            run("mkswap", "-q", swap)
            uuids["/dev/sdb2"] = blkid(swap, "UUID")
        with window(sdb, 33, 31) as vault:
            run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                vault, "-", input="not-a-secret")  # fmt: skip
            uuids["/dev/sdb3"] = blkid(vault, "UUID")
        yield sda, sdb, uuids


DISKS = [SourceDisk("sda"), SourceDisk("sdb")]


def test_fstab_and_crypttab_on_a_second_disk_get_its_uuids_and_it_is_mounted(
    two_disks,
):
    sda, sdb, uuids = two_disks
    with chroot_backend.open_disk(sda, (sdb,)) as guest:
        mounted = {m.mountpoint: m.device for m in guest.mounts()}
        # The fstab names /srv/data by kernel name; found on the second
        # disk, it is mounted where the system expects it.
        marker = guest.read("/srv/data/on-the-second-disk")
        plan = device_names.plan(guest, DISKS)
        device_names.apply(guest, plan)
        fstab = guest.read("/etc/fstab")
        crypttab = guest.read("/etc/crypttab")
    assert "/srv/data" in mounted and marker == "yes\n"
    assert plan.unresolved == []
    for old, uuid in uuids.items():
        assert plan.renames[old] == f"UUID={uuid}"
    assert f"UUID={uuids['/dev/sdb1']} /srv/data ext4" in fstab
    assert f"UUID={uuids['/dev/sdb2']} none swap" in fstab
    assert crypttab == f"vault UUID={uuids['/dev/sdb3']} none luks\n"
    assert "/dev/sd" not in fstab + crypttab


def test_without_the_second_disk_its_entries_stay_unresolved_and_unmounted(
    two_disks,
):
    sda, _, _ = two_disks
    with chroot_backend.open_disk(sda) as guest:
        mounted = {m.mountpoint for m in guest.mounts()}
        plan = device_names.plan(guest, DISKS)
    assert "/srv/data" not in mounted
    assert sorted(plan.unresolved) == [
        "/etc/crypttab: /dev/sdb3",
        "/etc/fstab: /dev/sdb1",
        "/etc/fstab: /dev/sdb2",
    ]
