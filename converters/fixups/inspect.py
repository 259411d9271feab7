"""What an installed Linux system is: distribution, kernels, initramfs tool,
bootloader, firmware mode, where /, /boot and the ESP live, LVM, fstab.

Read through the GuestOS interface only, so the same inspection serves the
guestfs backend (images) and the chroot backend (a real disk).
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field

from converters.fixups.guest import GuestOS, Mount

# Families whose conversion is implemented and tested end to end. Others are
# inspected (so the message can name them) and refused before any change.
SUPPORTED_FAMILIES = ("debian",)
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


@dataclass(frozen=True)
class Kernel:
    version: str
    image: str  # /boot/vmlinuz-VERSION
    initramfs: str  # the file its bootloader entry loads (may not exist yet)
    modules: str  # /lib/modules/VERSION


@dataclass(frozen=True)
class FstabEntry:
    spec: str  # what to mount: UUID=..., /dev/sda1, /dev/mapper/vg-lv
    mountpoint: str
    fstype: str
    options: str = "defaults"


@dataclass(frozen=True)
class Grub:
    config: str  # /boot/grub/grub.cfg or /boot/grub2/grub.cfg
    mkconfig: str  # the guest's grub-mkconfig or grub2-mkconfig
    platforms: tuple[str, ...]  # installed for: "i386-pc", "x86_64-efi"


@dataclass(frozen=True)
class GuestInfo:
    os_id: str  # os-release ID: debian, ubuntu, fedora, ...
    family: str  # debian, rhel, suse, arch or the ID itself
    version: str
    pretty_name: str
    hostname: str
    kernels: tuple[Kernel, ...]
    initramfs_tool: str  # "initramfs-tools", "dracut" or ""
    grub: Grub | None
    firmware: str  # "bios" or "uefi": what the installed bootloader is for
    root: str  # devices as the backend names them
    boot: str = ""  # "" when /boot is on the root filesystem
    esp: str = ""
    volume_groups: tuple[str, ...] = ()
    fstab: tuple[FstabEntry, ...] = ()
    efi_loaders: tuple[str, ...] = ()  # *.efi files on the ESP
    mounts: tuple[Mount, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return self.pretty_name or f"{self.os_id} {self.version}".strip()


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, raw = line.partition("=")
            try:
                words = shlex.split(raw)
            except ValueError:
                words = [raw.strip("\"'")]
            values[key.strip()] = " ".join(words)
    return values


def family_of(os_id: str, id_like: str) -> str:
    ids = [os_id, *id_like.split()]
    for fam, members in (
        ("debian", ("debian", "ubuntu")),
        ("rhel", ("rhel", "fedora", "centos")),
        ("suse", ("suse", "opensuse", "sles")),
        ("arch", ("arch",)),
    ):
        if any(i in members for i in ids):
            return fam
    return os_id or "unknown"


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 3:
            opts = words[3] if len(words) > 3 else "defaults"
            entries.append(FstabEntry(words[0], words[1], words[2], opts))
    return entries


def find_program(guest: GuestOS, name: str) -> str:
    for d in SBIN:
        if guest.is_file(f"{d}/{name}"):
            return f"{d}/{name}"
    return ""


def _kernels(guest: GuestOS, tool: str, family: str) -> list[Kernel]:
    found = []
    for modules in guest.glob("/lib/modules/*"):
        version = posixpath.basename(modules)
        image = f"/boot/vmlinuz-{version}"
        if not guest.is_file(image):
            continue  # modules left behind by a removed kernel
        # Debian names it initrd.img-V whichever tool makes it; Fedora-style
        # dracut installs use initramfs-V.img.
        candidates = [f"/boot/initrd.img-{version}", f"/boot/initramfs-{version}.img"]
        existing = [c for c in candidates if guest.exists(c)]
        fedora_style = tool == "dracut" and family != "debian"
        default = candidates[1] if fedora_style else candidates[0]
        found.append(Kernel(version, image, (existing or [default])[0], modules))
    return sorted(found, key=lambda k: k.version)


def _initramfs_tool(guest: GuestOS) -> str:
    if find_program(guest, "update-initramfs"):
        return "initramfs-tools"
    if find_program(guest, "dracut"):
        return "dracut"
    return ""


def _grub(guest: GuestOS) -> Grub | None:
    for base, mkconfig in (
        ("/boot/grub", "grub-mkconfig"),
        ("/boot/grub2", "grub2-mkconfig"),
    ):
        program = find_program(guest, mkconfig)
        if guest.is_dir(base) and program:
            platforms = tuple(
                p for p in ("i386-pc", "x86_64-efi") if guest.is_dir(f"{base}/{p}")
            )
            return Grub(f"{base}/grub.cfg", program, platforms)
    return None


def _firmware(grub: Grub | None, esp: str, loaders: list[str]) -> str:
    if grub and "i386-pc" in grub.platforms and not (esp and loaders):
        return "bios"
    if esp and loaders:
        return "uefi"
    return "bios"


def inspect(guest: GuestOS) -> GuestInfo:
    os_release = ""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if guest.is_file(path):
            os_release = guest.read(path)
            break
    osr = parse_os_release(os_release)
    family = family_of(osr.get("ID", ""), osr.get("ID_LIKE", ""))
    tool = _initramfs_tool(guest)
    grub = _grub(guest)
    mounts = guest.mounts()
    by_point = {m.mountpoint: m.device for m in mounts}
    esp_point = next((p for p in ("/boot/efi", "/efi") if p in by_point), "")
    loaders = []
    if esp_point:
        for d in ("EFI", "efi"):
            loaders += guest.glob(f"{esp_point}/{d}/*/*.efi")
            loaders += guest.glob(f"{esp_point}/{d}/*/*.EFI")
    vgs = sorted({f.lv.split("/")[0] for f in guest.filesystems() if f.lv})
    fstab = guest.read("/etc/fstab") if guest.is_file("/etc/fstab") else ""
    hostname = (
        guest.read("/etc/hostname").strip() if guest.is_file("/etc/hostname") else ""
    )
    return GuestInfo(
        os_id=osr.get("ID", ""),
        family=family,
        version=osr.get("VERSION_ID", ""),
        pretty_name=osr.get("PRETTY_NAME", ""),
        hostname=hostname,
        kernels=tuple(_kernels(guest, tool, family)),
        initramfs_tool=tool,
        grub=grub,
        firmware=_firmware(grub, by_point.get(esp_point, ""), loaders),
        root=by_point.get("/", ""),
        boot=by_point.get("/boot", ""),
        esp=by_point.get(esp_point, ""),
        volume_groups=tuple(vgs),
        fstab=tuple(parse_fstab(fstab)),
        efi_loaders=tuple(sorted(set(loaders))),
        mounts=tuple(mounts),
    )


def missing(info: GuestInfo) -> list[str]:
    """What a conversion of this guest lacks, in words a user can act on;
    empty when it can go ahead."""
    gaps = []
    if info.family not in SUPPORTED_FAMILIES:
        gaps.append(
            f"support for the {info.family} family ({info.name or 'unknown system'}):"
            f" ferry converts {', '.join(SUPPORTED_FAMILIES)}-family guests"
        )
    if not info.kernels:
        gaps.append("an installed kernel: no /boot/vmlinuz-V with /lib/modules/V")
    if not info.initramfs_tool:
        gaps.append("an initramfs tool: neither update-initramfs nor dracut found")
    if info.grub is None:
        gaps.append(
            "GRUB: no /boot/grub or /boot/grub2 with grub-mkconfig (other "
            "bootloaders are not converted)"
        )
    if info.firmware == "uefi" and not info.esp:
        gaps.append("an EFI system partition mounted at /boot/efi or /efi")
    return gaps
