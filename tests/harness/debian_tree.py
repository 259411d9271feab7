"""Cached Debian 12 root trees for test machines, kept as tar files that
guestfs unpacks into a disk. debootstrap costs minutes; the tar is reused
for as long as the recipe below is unchanged."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from converters import cache
from image import mirrors

SUITE = "bookworm"
# Everything a test machine needs to boot on either firmware and to be
# converted later: both grub platforms (the recipe picks one), LVM, the
# kernel, and iproute2 for the boot marker's address.
BASE_PACKAGES = [
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "initramfs-tools",
    "zstd",
    "grub2-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "lvm2",
    "e2fsprogs",
    "dosfstools",
    "kmod",
    "iproute2",
]
# dracut replaces initramfs-tools, which the kernel pulls in during
# debootstrap, so it is installed afterwards in the finished tree.
VARIANTS = {"initramfs-tools": [], "dracut": ["dracut"]}
# Bump when _build changes what a tree contains.
TREE_STEPS_VERSION = 1


def tree_tar(variant: str) -> Path:
    """Path of the cached tar of `variant`, building it when missing."""
    extra = VARIANTS[variant]
    key = cache.recipe_key(SUITE, BASE_PACKAGES, extra, TREE_STEPS_VERSION)
    out = cache.root() / "trees" / f"{SUITE}-{variant}-{key}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.with_suffix(".lock")):
        if not out.exists():
            cache.prune(out.parent, f"{SUITE}-{variant}-", keep=out, spare=1)
            _build(out, extra)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Parallel test workers wait for one build instead of racing it."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(out: Path, extra: list[str]) -> None:
    """debootstrap the base tree; a variant starts from the base tar and
    installs its extra packages, which is quicker than another debootstrap."""
    work = Path(tempfile.mkdtemp(prefix=out.stem + "-build-", dir=out.parent))
    try:
        root = work / "root"
        if extra:
            root.mkdir()
            base = tree_tar("initramfs-tools")
            subprocess.run(["tar", "-C", str(root), "-xf", str(base)], check=True)
            with chroot_mounts(root):
                chroot(root, "apt-get", "update", "-q")
                chroot(root, "apt-get", "install", "-y", "-q",
                       "--no-install-recommends", *extra)  # fmt: skip
        else:
            mirror = mirrors.find(SUITE).archive
            include = "--include=" + ",".join(BASE_PACKAGES)
            subprocess.run(
                ["debootstrap", "--variant=minbase", include, SUITE, str(root), mirror],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        chroot(root, "apt-get", "clean")
        partial = out.with_suffix(".partial")
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
            check=True,
        )
        partial.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chroot(root: Path, *cmd: str) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
    }
    # Tools like dracut narrate every step; show that only when they fail.
    out = subprocess.run(
        ["chroot", str(root), *cmd], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        tail = (out.stdout + out.stderr)[-3000:]
        raise RuntimeError(f"chroot {' '.join(cmd)} failed ({out.returncode}):\n{tail}")


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev for tools that need them (apt, dracut); always
    unmounted, even when the command inside fails."""
    mounted: list[Path] = []
    resolv = root / "etc/resolv.conf"
    try:
        for src, fstype in (("proc", "proc"), ("sysfs", "sysfs")):
            target = root / ("proc" if fstype == "proc" else "sys")
            subprocess.run(["mount", "-t", fstype, src, str(target)], check=True)
            mounted.append(target)
        target = root / "dev"
        subprocess.run(["mount", "--bind", "/dev", str(target)], check=True)
        mounted.append(target)
        if os.path.exists("/etc/resolv.conf"):
            resolv.unlink(missing_ok=True)
            shutil.copy("/etc/resolv.conf", resolv)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
