"""The checks of a V2P deploy, all made before a byte is written.

A deploy erases disks, so each target must be named by the technician
(``--confirm`` with its kernel name, its /dev path or its serial); the
medium ferry booted from, read-only disks and disks in use (mounted, or
held by LVM/RAID) are refused; each image disk must fit its target. Every
problem found is reported at once, one sentence each, so a technician fixes
them in one go.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from converters import inventory
from converters.inventory import Disk


class DeployError(Exception):
    """A deploy that must not (or cannot) go on; nothing was written by the
    checks that raise it."""


@dataclass(frozen=True)
class DeployRequest:
    # An ImageInfo from list_images, or a local file path / http(s) URL.
    image: object
    # (image disk name, target device path), in image order.
    targets: list[tuple[str, str]]
    # What the technician typed to allow erasing the targets.
    confirm: list[str]
    hostname: str | None = None
    grow: bool = True
    shrink: bool = False
    # Make the first disk boot on this machine (drivers, bootloader, NIC
    # names, hostname); off only for a raw copy.
    fixups: bool = True
    # The hardware to fix for; None: this machine (deploy_fixups.this_machine).
    hardware: object = None
    # Leave a first-boot report for the ferry serve the image comes from
    # (converters/first_boot_report.py); an image from a file or URL has no
    # server to report to.
    report: bool = False


@dataclass(frozen=True)
class DiskPlan:
    image_disk: str
    image_size: int
    target: Disk

    @property
    def larger_by(self) -> int:
        return self.target.size - self.image_size

    @property
    def smaller(self) -> bool:
        return self.target.size < self.image_size


@dataclass(frozen=True)
class DeployPlan:
    disks: list[DiskPlan] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = []
        for d in self.disks:
            t = d.target
            ident = f"{t.path}" + (f" (serial {t.serial})" if t.serial else "")
            lines.append(
                f"image disk {d.image_disk} ({d.image_size} bytes) -> {ident}, "
                f"{t.size} bytes: everything on it is erased"
            )
        return lines


def target_disk(path: str) -> Disk:
    """The inventory of the whole disk at ``path`` (symlinks followed)."""
    real = os.path.realpath(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise DeployError(f"no disk {path}") from None
    if not stat.S_ISBLK(mode):
        raise DeployError(f"{path} is not a block device")
    name = os.path.basename(real)
    if not os.path.exists(f"/sys/class/block/{name}/size") or os.path.exists(
        f"/sys/class/block/{name}/partition"
    ):
        raise DeployError(f"{path} is a partition, not a whole disk")
    return inventory.disk(name)


def confirmed(disk: Disk, confirm: list[str]) -> bool:
    names = {disk.name, disk.path} | ({disk.serial} if disk.serial else set())
    return any(text.strip() in names for text in confirm if text.strip())


def check(
    request: DeployRequest, image_disks: dict[str, int], disks: dict[str, Disk]
) -> DeployPlan:
    """The plan, or DeployError listing every problem. ``image_disks``:
    name -> virtual size; ``disks``: target path -> its inventory."""
    problems: list[str] = []
    if not request.targets:
        problems.append("no target disk given")
    seen: set[str] = set()
    plans = []
    for image_disk, path in request.targets:
        disk = disks[path]
        if image_disk not in image_disks:
            problems.append(
                f"the image has no disk {image_disk} "
                f"(it has {', '.join(image_disks) or 'none'})"
            )
            continue
        need = image_disks[image_disk]
        if disk.name in seen:
            problems.append(f"{disk.name} is chosen for more than one image disk")
        seen.add(disk.name)
        if not confirmed(disk, request.confirm):
            serial = f" or its serial {disk.serial}" if disk.serial else ""
            problems.append(
                f"{disk.name} is not confirmed: erasing it needs "
                f"--confirm {disk.name}{serial}"
            )
        if disk.boot_medium:
            problems.append(f"{disk.name} is the medium ferry booted from")
        if disk.read_only:
            problems.append(f"{disk.name} is read-only")
        if disk.mounted:
            problems.append(
                f"{disk.name} is in use (mounted at {', '.join(disk.mounted)})"
            )
        if disk.holders:
            problems.append(
                f"{disk.name} is in use (held by {', '.join(disk.holders)})"
            )
        if disk.size < need and not request.shrink:
            # With --shrink, whether the used data fits is checked against
            # the image itself (deploy_shrink.plan), still before writing.
            problems.append(
                f"{disk.name} is too small for image disk {image_disk}: it holds "
                f"{disk.size} bytes, the image needs {need} (--shrink allows a "
                "smaller disk when the used data fits)"
            )
        plans.append(DiskPlan(image_disk, need, disk))
    if problems:
        raise DeployError("; ".join(problems) + ": nothing was written")
    return DeployPlan(plans)
