"""The guest's own tool gets the drivers, every kernel's image is rebuilt,
and an image that still lacks a driver is an error, not a surprise at boot."""

from __future__ import annotations

import pytest

from converters.fixups import initramfs
from converters.fixups.guest import FixupError
from converters.fixups.inspect import GuestInfo, Kernel
from tests.unit.fake_guest import FakeGuest

K1 = Kernel(
    "6.1.0-1",
    "/boot/vmlinuz-6.1.0-1",
    "/boot/initrd.img-6.1.0-1",
    "/lib/modules/6.1.0-1",
)
K2 = Kernel(
    "6.1.0-2",
    "/boot/vmlinuz-6.1.0-2",
    "/boot/initrd.img-6.1.0-2",
    "/lib/modules/6.1.0-2",
)
MODULE_PATHS = {
    "virtio_pci": "kernel/drivers/virtio/virtio_pci.ko",
    "virtio_blk": "kernel/drivers/block/virtio_blk.ko",
    "virtio_scsi": "kernel/drivers/scsi/virtio_scsi.ko",
    "virtio_net": "kernel/drivers/net/virtio_net.ko",
    "virtio_console": "kernel/drivers/char/virtio_console.ko",
}


def info(tool: str, kernels=(K1, K2)) -> GuestInfo:
    return GuestInfo(
        "debian",
        "debian",
        "12",
        "Debian 12",
        "h",
        kernels,
        tool,
        None,
        "bios",
        "/dev/sda1",
    )


def guest_with_kernels(tmp_path, builtin=("virtio_pci",), absent=()) -> FakeGuest:
    guest = FakeGuest(tmp_path)
    for k in (K1, K2):
        dep = "".join(
            f"{p}: \n" for m, p in MODULE_PATHS.items() if m not in builtin + absent
        )
        guest.put(f"{k.modules}/modules.dep", dep + "kernel/fs/ext4/ext4.ko: \n")
        guest.put(
            f"{k.modules}/modules.builtin",
            "".join(MODULE_PATHS[m] + "\n" for m in builtin),
        )
        guest.put(k.initramfs, "old image")
    return guest


def lister(contents: dict[str, list[str]]):
    def run(argv):
        return "\n".join(contents[argv[1]])

    return run


def test_initramfs_tools_gets_modules_file_and_every_kernel_rebuilt(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.mkdir_p("/usr/bin")
    guest.put("/usr/bin/lsinitramfs", "")
    guest.put("/etc/initramfs-tools/modules", "# list\nahci\nvirtio_blk\n")
    listed = [f"usr/lib/modules/x/{p}" for p in MODULE_PATHS.values()]
    guest.commands = {
        "update-initramfs": lambda argv: "",
        "lsinitramfs": lister({K1.initramfs: listed, K2.initramfs: listed}),
    }
    initramfs.ensure_modules(guest, info("initramfs-tools"))
    modules = guest.read("/etc/initramfs-tools/modules").splitlines()
    assert modules[:3] == ["# list", "ahci", "virtio_blk"]
    assert modules[4:] == ["virtio_pci", "virtio_scsi", "virtio_net", "virtio_console"]
    assert ["update-initramfs", "-u", "-k", "6.1.0-1"] in guest.ran
    assert ["update-initramfs", "-u", "-k", "6.1.0-2"] in guest.ran


def test_dracut_gets_add_drivers_whatever_drivers_says(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.put("/etc/dracut.conf.d/10-hardware.conf", 'drivers="ahci sd_mod"\n')
    guest.put("/usr/bin/lsinitrd", "")
    listed = [
        f"-rw-r--r-- 1 root root 1 Jan 1 usr/lib/modules/x/{p}.xz"
        for p in MODULE_PATHS.values()
    ]
    guest.commands = {
        "dracut": lambda argv: "",
        "lsinitrd": lister({K1.initramfs: listed, K2.initramfs: listed}),
    }
    initramfs.ensure_modules(guest, info("dracut"))
    conf = guest.read(initramfs.DRACUT_CONF)
    assert (
        'add_drivers+=" virtio_pci virtio_blk virtio_scsi virtio_net virtio_console "'
        in conf
    )
    assert ["dracut", "--force", K1.initramfs, K1.version] in guest.ran


def test_image_still_lacking_a_driver_is_an_error(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.put("/usr/bin/lsinitramfs", "")
    listed = [p for m, p in MODULE_PATHS.items() if m != "virtio_blk"]
    guest.commands = {
        "update-initramfs": lambda argv: "",
        "lsinitramfs": lister({K1.initramfs: listed, K2.initramfs: listed}),
    }
    with pytest.raises(FixupError, match="lacks virtio_blk"):
        initramfs.ensure_modules(guest, info("initramfs-tools"))


def test_builtin_modules_need_not_be_in_the_image():
    text = "usr/lib/modules/x/kernel/drivers/block/virtio_blk.ko.zst\n"
    assert (
        initramfs.missing_from_image(text, ["virtio_pci", "virtio_blk"], {"virtio_pci"})
        == []
    )
    assert initramfs.missing_from_image(text, ["virtio_net"], set()) == ["virtio_net"]


def test_kernel_without_a_driver_is_found_before_any_change(tmp_path):
    guest = guest_with_kernels(tmp_path, absent=("virtio_scsi",))
    gaps = initramfs.check(guest, info("initramfs-tools"))
    assert gaps == [
        "kernel 6.1.0-1: modules virtio_scsi",
        "kernel 6.1.0-2: modules virtio_scsi",
    ]
