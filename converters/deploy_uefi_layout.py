"""A BIOS image for a UEFI machine: the image's MBR turned into a GPT in
place and an EFI system partition added in the target's space past the
image, so that the fixups can put grub on it (deploy_fixups).

UEFI firmware boots only from an ESP; a VM image made for SeaBIOS has none.
Its partitions stay where they are (sgdisk's MBR-to-GPT conversion keeps
every start and size; the primary GPT fits in the 1 MiB before the first
partition and the backup goes to the end of the larger target), and the ESP
takes the last ESP_SIZE of the disk. Only a target at least ``ROOM`` larger
than the image can take it: a same-size disk is refused before a byte is
written, with that reason.

    needs_esp(head, ...)   before the write: True, False or LayoutError
    add_esp(target, ...)   after the verified write, before the fixups
"""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
from dataclasses import dataclass

from converters import deploy_fixups
from converters.events import EventStream
from converters.fixups import chroot_backend

MiB = 1 << 20
# Big enough for FAT32 with 512-byte sectors and for a grub per distribution
# and the fallback loader; smaller than any disk growth worth a deploy.
ESP_SIZE = 128 * MiB
# The ESP, the backup GPT (33 sectors) and alignment slack.
ROOM = ESP_SIZE + 2 * MiB
# GPT's header and entries take LBA 1-33: an MBR partition starting there
# (a 1990s layout at LBA 1) cannot be kept in place.
FIRST_GPT_FREE_LBA = 34
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_LABEL = "EFI system partition"


class LayoutError(Exception):
    """Why the image cannot be given an ESP on this target; one line."""


@dataclass(frozen=True)
class EspReport:
    partition: int
    start: int  # bytes
    size: int
    uuid: str  # the FAT volume id, as fstab names it
    converted: bool  # the table was MBR and is now GPT


def _mbr_entries(head: bytes) -> list[tuple[int, int, int]]:
    """(type, first LBA, sectors) of the used primary MBR entries."""
    entries = []
    for i in range(4):
        raw = head[446 + 16 * i : 446 + 16 * (i + 1)]
        kind = raw[4]
        start, count = struct.unpack_from("<II", raw, 8)
        if kind:
            entries.append((kind, start, count))
    return entries


def needs_esp(head: bytes, image_disk: str, image_size: int, target_size: int) -> bool:
    """Whether the image (its first MiB in ``head``) needs an ESP for a UEFI
    machine: False when it has one; True when it can be given one on this
    target; LayoutError (nothing written yet) when it cannot."""
    if deploy_fixups.has_esp(head):
        return False
    if len(head) < 1024 or head[510:512] != b"\x55\xaa":
        raise LayoutError(
            f"this machine boots UEFI but image disk {image_disk} has no "
            "partition table to add an EFI system partition to"
        )
    entries = _mbr_entries(head)
    if any(kind == 0xEE for kind, _, _ in entries):
        pass  # a GPT without an ESP: an entry is added, nothing converted
    elif any(start < FIRST_GPT_FREE_LBA for _, start, _ in entries):
        raise LayoutError(
            f"this machine boots UEFI and image disk {image_disk} is a BIOS "
            "(MBR) image whose first partition starts before sector "
            f"{FIRST_GPT_FREE_LBA}, where a GPT must go: it cannot be "
            "converted to GPT + EFI system partition"
        )
    if target_size - image_size < ROOM:
        raise LayoutError(
            f"this machine boots UEFI and image disk {image_disk} has no EFI "
            f"system partition (a BIOS image); ferry converts it to GPT and "
            f"adds one, which needs {ROOM // MiB} MiB on the target beyond the "
            f"image, and the target is only "
            f"{max(0, target_size - image_size) // MiB} MiB larger"
        )
    return True


def _run(*argv: str) -> str:
    out = subprocess.run(
        argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL
    )
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:]
        raise LayoutError(f"{argv[0]} failed: {' '.join(detail) or out.returncode}")
    return out.stdout


def _table(target: str) -> dict:
    return json.loads(_run("sfdisk", "--json", target))["partitiontable"]


def add_esp(target: str, events: EventStream) -> EspReport:
    """Convert ``target``'s MBR to GPT (a GPT's backup header is moved to
    the end instead), add an ESP at the end of the disk, make its FAT32 and
    mount it at /boot/efi in the image's fstab."""
    before = _table(target)
    converted = before.get("label") == "dos"
    if converted:
        # -g: MBR to GPT, every partition kept where it is.
        _run("sgdisk", "--mbrtogpt", target)
        events.log(f"uefi layout: {target}: MBR converted to GPT, partitions kept")
    else:
        _run("sgdisk", "--move-second-header", target)
    numbers = [
        chroot_backend.partition_number(p["node"], i + 1)
        for i, p in enumerate(_table(target).get("partitions", []))
    ]
    number = max(numbers, default=0) + 1
    _run(
        "sgdisk",
        f"--new={number}:-{ESP_SIZE // 1024}K:0",
        f"--typecode={number}:{ESP_TYPE}",
        f"--change-name={number}:{ESP_LABEL}",
        target,
    )
    subprocess.run(["blockdev", "--rereadpt", target], capture_output=True)
    part = next(
        p
        for p in _table(target)["partitions"]
        if chroot_backend.partition_number(p["node"], 0) == number
    )
    start, size = int(part["start"]) * 512, int(part["size"]) * 512
    with contextlib.ExitStack() as stack:
        node = next(
            n for n in chroot_backend.partitions(target, stack) if n.number == number
        )
        _run("mkfs.vfat", "-F", "32", "-n", "EFI", node.device)
        uuid = chroot_backend.probe(node.device).get("UUID", "")
    if not uuid:
        raise LayoutError(f"the new EFI system partition {number} has no FAT id")
    events.log(
        f"uefi layout: {target}: EFI system partition {number}, "
        f"{size // MiB} MiB at {start // MiB} MiB, FAT32 {uuid}"
    )
    _mount_in_fstab(target, uuid, events)
    return EspReport(number, start, size, uuid, converted)


def _mount_in_fstab(target: str, uuid: str, events: EventStream) -> None:
    """/boot/efi in the image's fstab (where Debian and Fedora put the ESP),
    so the fixups mount it and the installed system keeps it mounted for
    grub updates."""
    with chroot_backend.open_disk(target) as guest:
        fstab = guest.read("/etc/fstab")
        taken = [
            line
            for line in fstab.splitlines()
            if len(line.split("#", 1)[0].split()) >= 2
            and line.split()[1] in ("/boot/efi", "/efi")
        ]
        if taken:
            raise LayoutError(
                f"the image's fstab already mounts {taken[0].split()[1]} from a "
                "filesystem that is not on its disk"
            )
        guest.mkdir_p("/boot/efi")
        # nofail: the firmware has already loaded grub from it; only grub
        # updates need it mounted, so a slow udev (or a lost ESP) must not
        # hold the boot in emergency mode, as a plain entry does after 90 s.
        line = f"UUID={uuid} /boot/efi vfat umask=0077,nofail 0 1\n"
        guest.write("/etc/fstab", fstab.rstrip("\n") + "\n" + line)
    events.log(f"uefi layout: /boot/efi added to the image's /etc/fstab ({uuid})")
