"""The fixups of a V2P deploy: the written disk opened with the chroot
backend and made to boot on the hardware the live environment sees.

The same pipeline as a conversion (converters/fixups/pipeline.py) with what
this machine needs instead of virtio: the kernel modules bound to the
target disk's controller chain and to each NIC (sysfs: the ``module`` link
of every driver on the device's path), NIC names pinned to this machine's
MACs in the order the image's network configuration names its interfaces,
the firmware the live environment booted with, a hostname (``{mac}`` and
``{serial}`` filled in for labs), and the qemu guest agent masked.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from converters import first_boot_report
from converters.events import EventStream
from converters.fixups import chroot_backend, nic_names, pipeline
from converters.fixups.device_names import SourceDisk
from converters.fixups.guest import Filesystem, FixupError, GuestOS

SYS = Path("/sys")
# Masked on metal: they wait for a virtio-serial port that is not there.
VIRTUAL_ONLY = ("qemu-guest-agent.service", "spice-vdagent.service")
# Modules of disks and filesystems themselves (not on a controller's path).
DISK_MODULES = {"sd": "sd_mod", "nvme": "nvme", "vd": "virtio_blk"}


@dataclass(frozen=True)
class Hardware:
    """What the deployed system must boot on."""

    firmware: str  # "bios" or "uefi"
    modules: tuple[str, ...]
    macs: tuple[str, ...] = ()  # NICs in order
    serial: str = ""  # the target disk's


@dataclass(frozen=True)
class _Nic:
    name: str
    mac: str


@dataclass
class FixupReport:
    hostname: str = ""
    pins: list[tuple[str, str]] = field(default_factory=list)  # name, mac
    modules: tuple[str, ...] = ()
    bootloader: str = ""
    first_boot: first_boot_report.Armed | None = None


def live_firmware() -> str:
    return "uefi" if (SYS / "firmware/efi").is_dir() else "bios"


def _module_of(device: Path) -> str:
    link = device / "driver/module"
    return os.path.basename(os.path.realpath(link)) if link.exists() else ""


def chain_modules(sys_device: Path) -> list[str]:
    """Modules of the drivers bound along a device's path to the root."""
    found = []
    path = sys_device.resolve()
    while path != path.parent and str(path).startswith(str(SYS / "devices")):
        module = _module_of(path)
        if module and module not in found:
            found.append(module)
        path = path.parent
    return found


ESP_GUID = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").bytes_le
MBR_ESP, MBR_PROTECTIVE = 0xEF, 0xEE


def has_esp(head: bytes, sector: int = 512) -> bool:
    """Whether the partition table at the start of an image (its first MiB)
    has an EFI system partition: an MBR entry of type 0xEF, or a GPT entry
    of the ESP type. A UEFI machine cannot boot an image without one."""
    if len(head) < 2 * sector or head[510:512] != b"\x55\xaa":
        return False
    types = [head[446 + 16 * i + 4] for i in range(4)]
    if MBR_ESP in types:
        return True
    if MBR_PROTECTIVE not in types or head[sector : sector + 8] != b"EFI PART":
        return False
    entries_lba, count, size = struct.unpack_from("<QII", head, sector + 72)
    start = entries_lba * sector
    for i in range(min(count, 1024)):
        entry = head[start + i * size : start + i * size + 16]
        if entry == ESP_GUID:
            return True
    return False


def this_machine(target: str) -> Hardware:
    """The firmware, modules, NIC MACs and disk serial of this machine."""
    name = os.path.basename(os.path.realpath(target))
    modules = chain_modules(SYS / "class/block" / name / "device")
    for prefix, module in DISK_MODULES.items():
        if name.startswith(prefix) and module not in modules:
            modules.append(module)
    macs = []
    for nic in sorted((SYS / "class/net").glob("*")):
        if not (nic / "device").exists():
            continue  # virtual: lo, bridges, veth
        modules += [m for m in chain_modules(nic / "device") if m not in modules]
        macs.append((nic / "address").read_text().strip())
    return Hardware(live_firmware(), tuple(modules), tuple(macs), disk_serial(name))


def disk_serial(name: str) -> str:
    """The disk's serial: sysfs ``serial`` (NVMe, virtio), else the SCSI unit
    serial number page (VPD 0x80), which is how SATA and SAS disks show it:
    they have no ``serial`` file, and a lab's {serial} would be empty."""
    block = SYS / "class/block" / name
    for path in (block / "device/serial", block / "serial"):
        if path.is_file():
            return path.read_text().strip()
    vpd = block / "device/vpd_pg80"
    try:
        page = vpd.read_bytes()
    except OSError:
        return ""
    if len(page) < 4 or page[1] != 0x80:
        return ""
    return page[4 : 4 + page[3]].decode("ascii", "replace").strip()


def hostname_for(pattern: str, hardware: Hardware) -> str:
    mac = hardware.macs[0].replace(":", "") if hardware.macs else ""
    name = pattern.replace("{mac}", mac).replace("{serial}", hardware.serial)
    return name.lower().strip("-")[:63]


def set_hostname(guest: GuestOS, name: str) -> None:
    old = guest.read("/etc/hostname").strip() if guest.is_file("/etc/hostname") else ""
    guest.write("/etc/hostname", name + "\n")
    if guest.is_file("/etc/hosts"):
        lines = []
        for line in guest.read("/etc/hosts").splitlines():
            fields = line.split()
            if old and old in fields[1:]:
                line = " ".join(name if f == old else f for f in fields)
            lines.append(line)
        guest.write("/etc/hosts", "\n".join(lines) + "\n")


def _image_hostname(guest: GuestOS) -> str:
    name = guest.read("/etc/hostname").strip() if guest.is_file("/etc/hostname") else ""
    return name or "localhost"


def mask_virtual_only(guest: GuestOS) -> list[str]:
    masked = []
    for unit in VIRTUAL_ONLY:
        if any(guest.is_file(f"{d}/{unit}") for d in ("/lib/systemd/system",)):
            guest.run_command(
                ["ln", "-sfn", "/dev/null", f"/etc/systemd/system/{unit}"]
            )
            masked.append(unit)
    return masked


def install_bootloader(guest, disk: str, real_nodes: bool) -> str:
    """BIOS: grub on the disk's boot area."""
    if not real_nodes:
        # grub-install maps /boot to its disk through the kernel's partition
        # nodes; with loop stand-ins it cannot, and the image's own BIOS
        # boot code (written with the image) already finds /boot by UUID.
        return "BIOS: the image's boot code kept (no kernel partition nodes)"
    guest.run_command(["grub-install", "--target=i386-pc", disk])
    return f"grub-install i386-pc on {disk}"


def _esp(guest) -> tuple[str, Filesystem]:
    """The ESP's mount point in the guest and its filesystem."""
    for mount in guest.mounts():
        if mount.mountpoint in ("/boot/efi", "/efi"):
            fs = next(f for f in guest.filesystems() if f.device == mount.device)
            return mount.mountpoint, fs
    raise FixupError(
        "this machine boots UEFI but the image mounts no EFI system partition "
        "at /boot/efi or /efi"
    )


def _distributor(guest) -> str:
    """The EFI directory name grub-install would choose (Debian: debian)."""
    if guest.is_file("/etc/os-release"):
        for line in guest.read("/etc/os-release").splitlines():
            if line.startswith("ID="):
                return line[3:].strip().strip('"') or "linux"
    return "linux"


def install_uefi_grub(guest, disk: str, events: EventStream) -> str:
    """grub on the ESP, and this machine's NVRAM entry for it.

    Run before the pipeline, whose UEFI step then copies the loader to the
    fallback path EFI/BOOT/BOOTX64.EFI (a machine whose NVRAM is reset, or a
    disk moved to another machine, boots that). The NVRAM entry is made by
    the live system's efibootmgr, not the image's: a VM image rarely
    carries efibootmgr, and the image's grub-install would fail without
    it."""
    esp, fs = _esp(guest)
    name = _distributor(guest)
    guest.run_command(
        [
            "grub-install",
            "--target=x86_64-efi",
            f"--efi-directory={esp}",
            f"--bootloader-id={name}",
            "--no-nvram",
        ]
    )
    loader = f"\\EFI\\{name}\\grubx64.efi"
    if not guest.is_file(f"{esp}/EFI/{name}/grubx64.efi"):
        raise FixupError(f"grub-install made no {esp}/EFI/{name}/grubx64.efi")
    entry = nvram_entry(disk, fs.partition, name, loader, events)
    return f"grub-install x86_64-efi on {esp} ({loader}); {entry}"


def nvram_entry(
    disk: str, partition: int | None, label: str, loader: str, events: EventStream
) -> str:
    """Boot entry ``label`` for ``loader`` on the ESP, first in BootOrder;
    earlier entries of the same label (a deploy run again) are removed."""
    if not (SYS / "firmware/efi/efivars").is_dir() or partition is None:
        events.log(
            "bootloader: no EFI variables here (or no ESP partition number): "
            "no NVRAM entry, the fallback path boots",
            "warning",
        )
        return "no NVRAM entry"
    listing = _efibootmgr()
    for number, old in _boot_entries(listing):
        if old == label:
            _efibootmgr("--bootnum", number, "--delete-bootnum")
    out = _efibootmgr(
        "--create",
        "--disk",
        disk,
        "--part",
        str(partition),
        "--label",
        label,
        "--loader",
        loader,
    )
    created = [n for n, lab in _boot_entries(out) if lab == label]
    order = next((ln for ln in out.splitlines() if ln.startswith("BootOrder")), "")
    events.log(
        f"bootloader: NVRAM Boot{created[0] if created else '?'} {label}; {order}"
    )
    return f"NVRAM entry Boot{created[0] if created else '?'} {label!r}"


_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})\*?\s+(.*?)(?:\t|\s{2,}|$)")


def _boot_entries(listing: str) -> list[tuple[str, str]]:
    entries = []
    for line in listing.splitlines():
        m = _ENTRY.match(line)
        if m:
            entries.append((m.group(1), m.group(2).strip()))
    return entries


def _efibootmgr(*args: str) -> str:
    out = subprocess.run(
        ["efibootmgr", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
    )
    if out.returncode != 0:
        raise FixupError(f"efibootmgr {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def fix(
    target: str,
    hardware: Hardware,
    hostname: str | None,
    image_disk: str,
    events: EventStream,
    more: tuple[tuple[str, str], ...] = (),
    register_report: Callable[[str], first_boot_report.Credential] | None = None,
) -> FixupReport:
    """``more``: the other disks, (target path, image disk name) in image
    order; their filesystems are mounted and named by UUID too.
    ``register_report`` registers the deployed system's first-boot report
    under its host name (deploy.py); its credential and unit go into the
    system."""
    report = FixupReport()
    _reread_partitions(target)
    for path, _ in more:
        _reread_partitions(path)
    with chroot_backend.open_disk(target, tuple(p for p, _ in more)) as guest:
        names = [name for name, _ in nic_names.configured_names(guest)]
        nics = [_Nic(n, m) for n, m in zip(names, hardware.macs, strict=False)]
        report.pins = [(n.name, n.mac) for n in nics]
        root_dev = next(m.device for m in guest.mounts() if m.mountpoint == "/")
        root_fs = next(
            (f.fstype for f in guest.filesystems() if f.device == root_dev), ""
        )
        wanted = [*hardware.modules, root_fs] if root_fs else list(hardware.modules)
        modules = tuple(dict.fromkeys(wanted))
        report.modules = modules
        request = pipeline.Request(
            source_disks=[SourceDisk(image_disk)] + [SourceDisk(n) for _, n in more],
            nics=tuple(nics),
            firmware=hardware.firmware,
            modules=modules,
            pin_nics=bool(nics),
        )
        if hardware.firmware == "uefi":
            # Before the pipeline: its UEFI step makes the fallback loader
            # from the one grub-install puts on the ESP.
            events.step("bootloader", "uefi")
            report.bootloader = install_uefi_grub(guest, target, events)
            events.log(f"bootloader: {report.bootloader}")
        ctx = pipeline.run(guest, request, events)
        if not _has_kernel_nodes(guest) and ctx.info.grub is not None:
            _drop_loopback(guest, ctx.info.grub.config)
        if hostname:
            report.hostname = hostname_for(hostname, hardware)
            set_hostname(guest, report.hostname)
            events.log(f"hostname: {report.hostname}")
        for unit in mask_virtual_only(guest):
            events.log(f"agents: masked {unit} (virtual machines only)")
        if register_report is not None:
            events.step("first-boot report", "")
            name = report.hostname or _image_hostname(guest)
            report.first_boot = first_boot_report.arm(
                guest, register_report, name, events
            )
        if hardware.firmware != "uefi":
            events.step("bootloader", hardware.firmware)
            report.bootloader = install_bootloader(
                guest, target, _has_kernel_nodes(guest)
            )
            events.log(f"bootloader: {report.bootloader}")
    return report


# grub-mkconfig's prepare_grub_to_access_device treats a filesystem on
# /dev/loopN as a file to loop-mount at boot: "loopback loop4 /loop0" then
# "set root=(loop4)". With loop stand-ins for partitions (no kernel nodes)
# those lines name this live system's devices; the "search --fs-uuid" line
# before them already finds the filesystem on the real disk.
_LOOPBACK = re.compile(r"^\s*(loopback\s+loop\d+\s+\S+|set root=\(loop\d+\))\s*$")


def _drop_loopback(guest: GuestOS, config: str) -> None:
    text = guest.read(config)
    kept = [line for line in text.splitlines() if not _LOOPBACK.match(line)]
    if len(kept) != len(text.splitlines()):
        guest.write(config, "\n".join(kept) + "\n")


def _has_kernel_nodes(guest) -> bool:
    """The guest's filesystems are on the kernel's own partition nodes
    (stand-ins are loop devices; a data disk's whole-disk filesystem, on
    /dev/sdb, is the kernel's own node too)."""
    return all(
        (SYS / "class/block" / os.path.basename(m.device) / "partition").exists()
        or not os.path.basename(m.device).startswith("loop")
        for m in guest.mounts()
    )


def _reread_partitions(target: str) -> None:
    """Ask the kernel to read the new table, so the chroot uses its own
    partition nodes (refused on loop devices without partition scanning:
    loop stand-ins are used then)."""
    subprocess.run(
        ["blockdev", "--rereadpt", target],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
