"""Machine recipes: Debian 12 disks built with guestfs whose initramfs holds
only the drivers of the hardware they were "installed" on, so a machine moved
without the right fixups does not boot. Built disks are cached by the hash of
their recipe; tests get overlays and never change the cached base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from converters import accel, cache
from tests.harness import debian_tree, machine_files

MiB = 1 << 20
GiB = 1 << 30
# Bump when the build steps below change what a recipe produces; the files a
# machine carries (machine_files) are hashed by content, so editing them
# rebuilds by itself while reformatting this module does not.
BUILD_STEPS_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    name: str
    firmware: str  # "bios" or "uefi"
    layout: str  # "mbr-root-swap", "gpt-esp-boot-lvm" or "mbr-root"
    initramfs: str  # "initramfs-tools" or "dracut"
    drivers: tuple[str, ...]  # the only modules its initramfs carries
    disk_size: int
    # the interface name its network configuration expects: what its own
    # hardware names the NIC (see profiles.py)
    nic: str
    used_disk: bool  # free space full of deleted random data


RECIPES = {
    r.name: r
    for r in [
        Recipe(
            "phys-bios",
            "bios",
            "mbr-root-swap",
            "initramfs-tools",
            ("ahci", "sd_mod", "ext4"),
            3 * GiB,
            "ens8",
            True,
        ),
        Recipe(
            "phys-uefi-lvm",
            "uefi",
            "gpt-esp-boot-lvm",
            "dracut",
            ("ahci", "sd_mod", "ext4", "dm_mod"),
            4 * GiB,
            "enp0s8",
            True,
        ),
        Recipe(
            "vm-virtio",
            "bios",
            "mbr-root",
            "initramfs-tools",
            ("virtio_pci", "virtio_blk", "ext4"),
            3 * GiB,
            "ens3",
            False,
        ),
        # A VM image built with dracut, as RHEL-style and hardened builds
        # are: the lab images onto AHCI machines from it.
        Recipe(
            "vm-virtio-dracut",
            "bios",
            "mbr-root",
            "dracut",
            ("virtio_pci", "virtio_blk", "ext4"),
            3 * GiB,
            "ens3",
            False,
        ),
    ]
}

# Drivers a machine's dracut configuration leaves out on purpose
# (omit_drivers), as builds for one kind of hardware do: the drivers of the
# other kind, and the modules they depend on. A fixup that adds only the
# driver names and not what they need fails to boot on these machines.
OMIT_DRIVERS = {
    "phys-uefi-lvm": (
        "virtio", "virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net",
        "virtio_ring",
    ),
    "vm-virtio-dracut": (
        "ahci", "libahci", "ata_piix", "ata_generic", "libata", "sd_mod",
    ),
}  # fmt: skip


# Packages some machines carry beyond the shared tree, installed in their
# chroot: phys-bios runs `ferry capture --live` itself (tests/e2e/
# test_live_p2v_boots.py), so it has Python, venv and the Debian packages
# ferry's venv takes from the system (parted, pyudev) and partclone.
EXTRA_PACKAGES = {
    "phys-bios": (
        "python3",
        "python3-venv",
        "python3-parted",
        "python3-pyudev",
        "partclone",
    ),
    # the first-boot report of a deployed machine goes out with curl
    "vm-virtio-dracut": ("curl",),
}


@dataclass
class BuiltMachine:
    recipe: Recipe
    disk: Path  # raw image, read-only cache: use an overlay
    kernel: str
    uuids: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, str] = field(default_factory=dict)  # path -> sha256

    @property
    def hostname(self) -> str:
        return self.recipe.name


def build(name: str) -> BuiltMachine:
    recipe = RECIPES[name]
    tree = debian_tree.tree_tar(recipe.initramfs)
    parts = [asdict(recipe), tree.name, BUILD_STEPS_VERSION, machine_files.CONTENT]
    if _kernel_args(recipe):  # (left out when empty: older keys stay valid)
        parts.append(_kernel_args(recipe))
    if name in EXTRA_PACKAGES:  # (the same: other machines keep their keys)
        parts.append(EXTRA_PACKAGES[name])
    if name in OMIT_DRIVERS:
        parts.append(OMIT_DRIVERS[name])
    key = cache.recipe_key(*parts)
    out = cache.root() / "machines" / f"{name}-{key}"
    meta = out / "machine.json"
    if not meta.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with debian_tree._locked(out.with_suffix(".lock")):
            if not meta.exists():
                # two older versions survive: another run may be booting them
                cache.prune(out.parent, f"{name}-", keep=out, spare=2)
                _build(recipe, tree, out)
    saved = json.loads(meta.read_text())
    return BuiltMachine(
        recipe, out / "disk.raw", saved["kernel"], saved["uuids"], saved["manifest"]
    )


def _build(recipe: Recipe, tree: Path, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"{recipe.name}-", dir=out.parent))
    try:
        root = work / "root"
        root.mkdir()
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-xf", str(tree)], check=True
        )
        kernel = _kernel_version(root)
        uuids = {k: str(uuid.uuid4()) for k in ("root", "swap", "boot")}
        manifest = _customize(recipe, root, kernel)
        custom = work / "custom.tar"
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(custom), "."],
            check=True,
        )
        shutil.rmtree(root)
        disk = work / "disk.raw"
        _make_disk(disk, recipe.disk_size, recipe.used_disk)
        uuids.update(_install(recipe, disk, custom, uuids))
        custom.unlink()
        out.mkdir()
        disk.rename(out / "disk.raw")
        info = {
            "recipe": asdict(recipe),
            "kernel": kernel,
            "uuids": uuids,
            "manifest": manifest,
        }
        (out / "machine.json").write_text(json.dumps(info, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kernel_version(root: Path) -> str:
    kernels = sorted(
        p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*")
    )
    return kernels[-1]


def _kernel_args(recipe: Recipe) -> str:
    # dracut activates only the LVs it is told about; without the swap LV
    # systemd waits 90 s for /dev/ferry/swap before giving up on it.
    if recipe.layout == "gpt-esp-boot-lvm":
        return "rd.lvm.lv=ferry/root rd.lvm.lv=ferry/swap"
    return ""


def _customize(recipe: Recipe, root: Path, kernel: str) -> dict[str, str]:
    """Hostname, marker, network, grub defaults and an initramfs limited to
    the recipe's drivers, all made in a chroot on the host (fast) rather than
    in the guestfs appliance (emulated)."""
    machine_files.write(root, "etc/hostname", recipe.name + "\n")
    machine_files.write(
        root, "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {recipe.name}\n"
    )
    machine_files.install_marker(root)
    machine_files.install_network(root, recipe.nic)
    # An older-style physical install names devices (root=/dev/sda1), as the
    # installs ferry converts often do; LVM names its volume.
    if recipe.layout == "mbr-root-swap":
        machine_files.install_grub_defaults(root, "", "GRUB_DISABLE_LINUX_UUID=true\n")
    else:
        machine_files.install_grub_defaults(root, _kernel_args(recipe))
    manifest = machine_files.write_live_data(
        root, seed=zlib.crc32(recipe.name.encode())
    )
    modules = "\n".join(recipe.drivers) + "\n"
    with debian_tree.chroot_mounts(root):
        extra = EXTRA_PACKAGES.get(recipe.name, ())
        if extra:
            debian_tree.chroot(root, "apt-get", "update", "-q")
            debian_tree.chroot(root, "apt-get", "install", "-y", "-q",
                               "--no-install-recommends", *extra)  # fmt: skip
            debian_tree.chroot(root, "apt-get", "clean")
        if recipe.initramfs == "initramfs-tools":
            machine_files.write(root, "etc/initramfs-tools/modules", modules)
            machine_files.write(
                root,
                "etc/initramfs-tools/conf.d/ferry-test",
                "MODULES=list\nRESUME=none\n",
            )
            debian_tree.chroot(root, "update-initramfs", "-u", "-k", kernel)
        else:
            drivers = " ".join(recipe.drivers)
            omit = " ".join(OMIT_DRIVERS.get(recipe.name, ()))
            machine_files.write(
                root,
                "etc/dracut.conf.d/10-hardware.conf",
                f'hostonly="no"\ndrivers="{drivers}"\n'
                + (f'omit_drivers+=" {omit} "\n' if omit else ""),
            )
            debian_tree.chroot(
                root,
                "dracut",
                "--force",
                "--kver",
                kernel,
                f"/boot/initrd.img-{kernel}",
            )
    return manifest


def _make_disk(disk: Path, size: int, used: bool) -> None:
    """A used disk's free space is not zero: it holds what was deleted. Random
    bytes stand for it, so a tool that copies free space pays for it."""
    with open(disk, "wb") as f:
        if used:
            chunk = 16 * MiB
            for _ in range(size // chunk):
                f.write(os.urandom(chunk))
        f.truncate(size)


def _install(recipe: Recipe, disk: Path, tar: Path, uuids: dict[str, str]) -> dict:
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(accel.detect().guestfs_settings())
    g.set_memsize(1024)
    g.add_drive_opts(str(disk), format="raw")
    g.launch()
    try:
        return _LAYOUTS[recipe.layout](g, recipe, tar, uuids)
    finally:
        g.shutdown()
        g.close()


def _ext4(g, dev: str, uid: str) -> None:
    # nodiscard keeps the deleted data in place: mke2fs would otherwise trim it
    g.mke2fs(dev, fstype="ext4", uuid=uid, discard=False)


def _finish(g, tar: Path, fstab: str, grub_install: list[list[str]]) -> None:
    g.tar_in(str(tar), "/", xattrs=True)
    g.write("/etc/fstab", fstab)
    for cmd in grub_install:
        g.command(cmd)
    g.command(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"])
    g.sync()


def _mbr_root(g, recipe: Recipe, tar: Path, uuids: dict[str, str]) -> dict:
    swap = recipe.layout == "mbr-root-swap"
    end = recipe.disk_size // 512 - 1
    root_end = end - (256 * MiB // 512) if swap else end
    g.part_init("/dev/sda", "mbr")
    g.part_add("/dev/sda", "p", 2048, root_end)
    g.part_set_bootable("/dev/sda", 1, True)
    _ext4(g, "/dev/sda1", uuids["root"])
    if swap:
        g.part_add("/dev/sda", "p", root_end + 1, end)
        g.part_set_mbr_id("/dev/sda", 2, 0x82)
        g.mkswap("/dev/sda2", uuid=uuids["swap"])
        fstab = "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n"
    else:
        fstab = f"UUID={uuids['root']} / ext4 errors=remount-ro 0 1\n"
    g.mount("/dev/sda1", "/")
    _finish(g, tar, fstab, [["grub-install", "--target=i386-pc", "/dev/sda"]])
    return {}


def _gpt_esp_boot_lvm(g, recipe: Recipe, tar: Path, uuids: dict[str, str]) -> dict:
    g.part_init("/dev/sda", "gpt")
    esp_end = 2048 + 128 * MiB // 512 - 1
    boot_end = esp_end + 384 * MiB // 512
    g.part_add("/dev/sda", "p", 2048, esp_end)
    g.part_add("/dev/sda", "p", esp_end + 1, boot_end)
    g.part_add("/dev/sda", "p", boot_end + 1, -34)
    g.part_set_gpt_type("/dev/sda", 1, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    g.part_set_gpt_type("/dev/sda", 3, "E6D6D379-F507-44C2-A23C-238F2A3DF928")
    g.mkfs("vfat", "/dev/sda1")
    _ext4(g, "/dev/sda2", uuids["boot"])
    g.pvcreate("/dev/sda3")
    g.vgcreate("ferry", ["/dev/sda3"])
    # Some of the volume group stays unallocated, as on real servers.
    g.lvcreate("root", "ferry", 2800)
    g.lvcreate("swap", "ferry", 256)
    _ext4(g, "/dev/ferry/root", uuids["root"])
    g.mkswap("/dev/ferry/swap", uuid=uuids["swap"])
    esp = g.vfs_uuid("/dev/sda1")
    g.mount("/dev/ferry/root", "/")
    g.mkdir_p("/boot")
    g.mount("/dev/sda2", "/boot")
    g.mkdir_p("/boot/efi")
    g.mount("/dev/sda1", "/boot/efi")
    fstab = (
        "/dev/mapper/ferry-root / ext4 errors=remount-ro 0 1\n"
        f"UUID={uuids['boot']} /boot ext4 defaults 0 2\n"
        f"UUID={esp} /boot/efi vfat umask=0077 0 1\n"
        "/dev/mapper/ferry-swap none swap sw 0 0\n"
    )
    efi = [
        "grub-install",
        "--target=x86_64-efi",
        "--efi-directory=/boot/efi",
        "--no-nvram",
    ]
    # The named entry is what an installer leaves; the removable path is what
    # a machine with fresh NVRAM (our test profiles) actually boots.
    _finish(g, tar, fstab, [efi + ["--bootloader-id=debian"], efi + ["--removable"]])
    return {"esp": esp}


_LAYOUTS = {
    "mbr-root-swap": _mbr_root,
    "mbr-root": _mbr_root,
    "gpt-esp-boot-lvm": _gpt_esp_boot_lvm,
}
