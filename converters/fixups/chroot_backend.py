"""The chroot backend: a guest on a real disk of the live environment (V2P),
its filesystems mounted under a private folder as the guest's fstab mounts
them, with /dev, /proc and /sys bound in so that the guest's own
update-initramfs, dracut, grub-mkconfig and grub-install run with the
guest's configuration on the real hardware.

Partitions are the kernel's own nodes (/dev/sda1) when the kernel scanned
the table; otherwise (a freshly written disk whose table the kernel has not
re-read, or a loop device on a kernel without loop partitions, as on the
test machines) each gets a loop device at its offset.
"""

from __future__ import annotations

import contextlib
import glob as globmod
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from converters.fixups import device_names
from converters.fixups.guest import (
    Filesystem,
    FixupError,
    GuestCommandError,
    Mount,
    UnsupportedGuest,
)

log = logging.getLogger(__name__)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# As in the guestfs backend: these must mount, others are skipped with a
# warning (a broken data filesystem must not stop the OS being fixed).
ESSENTIAL = ("/", "/boot", "/boot/efi", "/efi", "/usr")
ROOT_TYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
MAX_SYMLINKS = 40


class Guest:
    """GuestOS over a guest mounted at ``root`` on the live system."""

    backend = "chroot"

    def __init__(self, root: Path, mounts: list[Mount], fs: list[Filesystem]) -> None:
        self.root = Path(root)
        self._mounts = mounts
        self._filesystems = fs

    def host_path(self, path: str) -> Path:
        """The host path of a guest path, its symlinks resolved inside the
        guest: an absolute link (/etc/resolv.conf -> /run/...) must not
        lead to the live system's own files."""
        parts = [p for p in path.split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = self.root.joinpath(*resolved, part)
            if candidate.is_symlink():
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise FixupError(f"{path}: too many levels of symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            resolved.append(part)
        return self.root.joinpath(*resolved)

    def read(self, path: str) -> str:
        return self.host_path(path).read_text("utf-8", "surrogateescape")

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        target = self.host_path(path)
        existed = target.exists()
        target.write_text(text, "utf-8", "surrogateescape")
        if mode is not None or not existed:
            os.chmod(target, 0o644 if mode is None else mode)

    def exists(self, path: str) -> bool:
        return self.host_path(path).exists()

    def is_dir(self, path: str) -> bool:
        return self.host_path(path).is_dir()

    def is_file(self, path: str) -> bool:
        return self.host_path(path).is_file()

    def glob(self, pattern: str) -> list[str]:
        base = str(self.root).rstrip("/")
        found = globmod.glob(base + "/" + pattern.lstrip("/"))
        return sorted("/" + os.path.relpath(p, base) for p in found)

    def mkdir_p(self, path: str) -> None:
        self.host_path(path).mkdir(parents=True, exist_ok=True)

    def copy(self, src: str, dst: str) -> None:
        shutil.copy2(self.host_path(src), self.host_path(dst))

    def remove(self, path: str) -> None:
        target = self.host_path(path)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()

    def run_command(
        self, argv: list[str], env: dict[str, str] | None = None, quiet: bool = False
    ) -> str:
        environ = {"PATH": PATH, "LANG": "C.UTF-8", **(env or {})}
        log.debug("chroot %s %s", self.root, " ".join(argv))
        out = subprocess.run(
            ["chroot", str(self.root), *argv],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        if not quiet:
            for line in out.stdout.splitlines():
                log.debug("  %s", line)
        if out.returncode != 0:
            raise GuestCommandError(argv, out.returncode, out.stdout)
        return out.stdout

    def mounts(self) -> list[Mount]:
        return list(self._mounts)

    def filesystems(self) -> list[Filesystem]:
        return list(self._filesystems)


@dataclass(frozen=True)
class PartitionNode:
    number: int
    device: str  # /dev/sda1, or the loop device standing in for it
    start: int  # bytes
    size: int


def _run(*argv: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    if out.returncode != 0:
        raise FixupError(f"{argv[0]} failed: {out.stderr.strip()}")
    return out.stdout


def partitions(disk: str, stack: contextlib.ExitStack) -> list[PartitionNode]:
    """The disk's partitions as block devices (loop stand-ins where the
    kernel has no node); loops are detached when ``stack`` closes."""
    table = json.loads(_run("sfdisk", "--json", disk))["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    found = []
    for i, part in enumerate(table.get("partitions", [])):
        number = partition_number(part["node"], i + 1)
        start, size = int(part["start"]) * sector, int(part["size"]) * sector
        node = part["node"]
        if not _kernel_node(node, disk, start, size):
            node = _run(
                "losetup", "-f", "--show", "--offset", str(start),
                "--sizelimit", str(size), disk,
            ).strip()  # fmt: skip
            stack.callback(subprocess.run, ["losetup", "-d", node], check=False)
        found.append(PartitionNode(number, node, start, size))
    return found


def partition_number(node: str, default: int) -> int:
    digits = ""
    for ch in reversed(node):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits) if digits else default


def _kernel_node(node: str, disk: str, start: int, size: int) -> bool:
    """The kernel's own partition node, and it matches the table we wrote
    (a stale node from the disk's previous table must not be used)."""
    name = os.path.basename(node)
    sysfs = Path("/sys/class/block") / name
    if not (Path(node).exists() and (sysfs / "partition").exists()):
        return False
    if sysfs.resolve().parent.name != os.path.basename(os.path.realpath(disk)):
        return False
    sectors = int((sysfs / "start").read_text()), int((sysfs / "size").read_text())
    return sectors == (start // 512, size // 512)


def probe(device: str) -> dict[str, str]:
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", device], capture_output=True, text=True
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _mount(stack: contextlib.ExitStack, device: str, where: Path, *opts: str) -> None:
    _run("mount", *opts, device, str(where))
    # Lazy only as a last resort: a busy mount left behind would keep the
    # disk from being deployed again.
    stack.callback(_umount, where)


def _umount(where: Path) -> None:
    out = subprocess.run(["umount", str(where)], capture_output=True, text=True)
    if out.returncode != 0:
        log.warning("umount %s failed (%s); detaching lazily", where, out.stderr)
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fstab(text: str) -> list[tuple[str, str, str]]:
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3:
            entries.append((fields[0], fields[1], fields[2]))
    return entries


def _resolve(spec: str, fs: list[Filesystem]) -> Filesystem | None:
    if spec.startswith("/dev/"):
        # A kernel name the VM used (/dev/sdb1: second disk, partition 1),
        # as the UUID rewrite will resolve it.
        spec = device_names.resolve(spec, fs, []) or spec
    key, _, value = spec.partition("=")
    for f in fs:
        if (key == "UUID" and f.uuid == value) or (key == "LABEL" and f.label == value):
            return f
    return None


def _filesystems(disk: str, index: int, stack) -> list[Filesystem]:
    """What is on the ``index``-th disk of the guest: its partitions, or a
    filesystem on the whole disk (a data disk without a table)."""
    try:
        nodes = partitions(disk, stack)
    except FixupError:
        if index == 0:
            raise
        nodes = [PartitionNode(0, disk, 0, 0)]
    fs = []
    for node in nodes:
        info = probe(node.device)
        if info.get("TYPE"):
            fs.append(
                Filesystem(
                    node.device,
                    info["TYPE"],
                    info.get("UUID", ""),
                    info.get("LABEL", ""),
                    index,
                    node.number or None,
                )
            )
    return fs


@contextlib.contextmanager
def open_disk(disk: str, more: tuple[str, ...] = ()) -> Iterator[Guest]:
    """The guest on ``disk`` (its root) and ``more`` (its other disks, in
    the image's order: fstab entries on them are mounted and their names
    resolved like the first disk's), mounted read-write. Leaving the block
    syncs and unmounts everything, detaching any loop stand-ins."""
    with contextlib.ExitStack() as stack:
        fs = []
        for index, each in enumerate((disk, *more)):
            fs += _filesystems(each, index, stack)
        _by_uuid_links(stack, fs)
        root = Path(tempfile.mkdtemp(prefix="ferry-chroot-"))
        stack.callback(shutil.rmtree, root, True)
        mounts = _mount_guest(stack, root, fs, disk)
        for what, fstype in (("/dev", ""), ("/proc", "proc"), ("/sys", "sysfs")):
            where = root / what.lstrip("/")
            where.mkdir(exist_ok=True)
            if fstype:
                _mount(stack, fstype, where, "-t", fstype)
            else:
                _mount(stack, what, where, "--bind")
        efivars = Path("/sys/firmware/efi/efivars")
        if efivars.is_dir():
            # grub-install makes the NVRAM entry through efibootmgr, which
            # needs efivarfs: a fresh sysfs mount does not carry it.
            _mount(
                stack, "efivarfs", root / "sys/firmware/efi/efivars", "-t", "efivarfs"
            )
        yield Guest(root, mounts, fs)
        subprocess.run(["sync"], check=False)


def _by_uuid_links(stack: contextlib.ExitStack, fs: list[Filesystem]) -> None:
    """/dev/disk/by-uuid links that udev would make, where no udev runs
    (containers, the test hosts): grub-mkconfig writes root=UUID=... only
    when the link exists, and the device name it would write otherwise is
    this machine's loop device."""
    folder = Path("/dev/disk/by-uuid")
    for f in fs:
        link = folder / f.uuid
        if not f.uuid or link.exists() or link.is_symlink():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.device)
        stack.callback(link.unlink, True)


def _mount_guest(stack, root: Path, fs: list[Filesystem], disk: str) -> list[Mount]:
    for candidate in (f for f in fs if f.fstype in ROOT_TYPES):
        _run("mount", candidate.device, str(root))
        if (root / "etc/fstab").is_file():
            stack.callback(_umount, root)
            break
        _umount(root)
    else:
        raise UnsupportedGuest(disk, ["a Linux root filesystem with /etc/fstab"])
    mounts = [Mount(candidate.device, "/")]
    entries = _fstab((root / "etc/fstab").read_text(errors="replace"))
    for spec, mountpoint, fstype in sorted(entries, key=lambda e: len(e[1])):
        if mountpoint in ("/", "none") or not mountpoint.startswith("/"):
            continue
        if fstype in ("swap", "proc", "sysfs", "tmpfs", "devpts", "nfs", "cifs"):
            continue
        found = _resolve(spec, fs)
        if found is None:
            if mountpoint in ESSENTIAL:
                raise FixupError(f"{mountpoint}: {spec} is not on {disk}")
            log.warning("fstab %s %s: not on %s, skipped", spec, mountpoint, disk)
            continue
        where = root / mountpoint.lstrip("/")
        where.mkdir(parents=True, exist_ok=True)
        try:
            _mount(stack, found.device, where)
        except FixupError as e:
            if mountpoint in ESSENTIAL:
                raise
            log.warning("mount %s on %s failed, skipped: %s", spec, mountpoint, e)
            continue
        mounts.append(Mount(found.device, mountpoint))
    return mounts
