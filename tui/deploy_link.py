"""The V2P seam: everything the V2P screens need from ``converters.deploy``.

That module does not exist yet. It will offer ``list_images(server)``,
``plan_deploy(DeployRequest(image, targets, confirm, hostname))`` (raising
DeployError for a disk too small, the boot medium or a mounted disk) and
``deploy(request, events)``. Until it does, the screens still list a local
image file, map and size-check its disks and take the typed confirmation,
and starting says plainly that this build cannot deploy: nothing is faked,
nothing is written.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from dataclasses import dataclass

from converters.inventory import Disk
from tui import fmt

NOT_AVAILABLE = "V2P deploy is not available in this build"


class DeployUnavailable(Exception):
    """``converters.deploy`` is missing from this build."""


@dataclass(frozen=True)
class ImageDisk:
    name: str
    size: int


@dataclass(frozen=True)
class Image:
    name: str
    disks: tuple[ImageDisk, ...]
    source: str  # the server's address, or the image file's path
    native: object = None  # the converters.deploy ImageInfo, when listed


@dataclass(frozen=True)
class Mapping:
    image_disk: ImageDisk
    target: Disk


def _engine():
    try:
        return importlib.import_module("converters.deploy")
    except ImportError:
        return None


def available() -> bool:
    return _engine() is not None


def list_images(server: str) -> list[Image]:
    engine = _engine()
    if engine is None:
        raise DeployUnavailable(
            f"{NOT_AVAILABLE}, so the server's images cannot be listed; "
            "an image file can still be checked against the disks"
        )
    return [
        Image(
            info.name,
            tuple(ImageDisk(n, s) for n, s in info.disks),
            server,
            native=info,
        )
        for info in engine.list_images(server)
    ]


def image_file(path: str) -> Image:
    """A qcow2 or raw image on a USB stick, or at an http(s) URL: its
    virtual size, read with ``qemu-img info`` (the same tool the KVM side
    uses; URLs through QEMU's curl driver, qemu-block-extra)."""
    url = path.startswith(("http://", "https://"))
    if not url and not os.path.exists(path):
        raise FileNotFoundError(f"no image file {path}")
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        raise ValueError(f"{path} is not a disk image: {out.stderr.strip()}")
    info = json.loads(out.stdout)
    stem = os.path.basename(path.split("?", 1)[0]).split(".", 1)[0] or "disk"
    return Image(stem, (ImageDisk(stem, int(info["virtual-size"])),), path)


def problems(mappings: list[Mapping]) -> list[str]:
    """Why a mapping cannot be written, one sentence each; empty when it
    can. converters.deploy checks again (plan_deploy) before writing."""
    found = []
    seen: set[str] = set()
    for m in mappings:
        disk, need = m.target, m.image_disk
        if disk.name in seen:
            found.append(f"{disk.name} is chosen for more than one image disk.")
        seen.add(disk.name)
        if disk.boot_medium:
            found.append(f"{disk.name} is the medium ferry booted from.")
        if disk.size < need.size:
            found.append(
                f"{disk.name} is too small for image disk {need.name}: it holds "
                f"{fmt.size(disk.size)}, the image needs {fmt.size(need.size)}."
            )
        if disk.read_only:
            found.append(f"{disk.name} is read-only.")
        if disk.mounted:
            found.append(
                f"{disk.name} is in use (mounted at {', '.join(disk.mounted)})."
            )
    return found


def confirm_matches(disk: Disk, typed: str) -> bool:
    """The technician typed this disk's name (sda, /dev/sda) or serial."""
    text = typed.strip()
    names = {disk.name, disk.path} | ({disk.serial} if disk.serial else set())
    return bool(text) and text in names


def request(image: Image, mappings: list[Mapping], confirm: list[str], hostname: str):
    """The DeployRequest for ``converters.deploy``; checked by plan()."""
    engine = _engine()
    if engine is None:
        raise DeployUnavailable(NOT_AVAILABLE)
    return engine.DeployRequest(
        image=image.native or image.source,
        targets=[(m.image_disk.name, m.target.path) for m in mappings],
        confirm=confirm,
        hostname=hostname or None,
        # An image from ferry serve: the deployed machine reports its first
        # boot there (a file or URL has no server to report to).
        report=image.native is not None,
    )


def plan(deploy_request):
    """Raises DeployError (too small, boot medium, mounted) before any
    write; returns the DeployPlan."""
    return _engine().plan_deploy(deploy_request)


def start(deploy_request, events):
    return _engine().deploy(deploy_request, events)
