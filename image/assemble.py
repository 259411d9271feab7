"""From the cached chroot to the media: install ferry from the working tree,
pack the root into a squashfs inside the one initramfs, then the hybrid ISO
(grub-mkrescue: BIOS and UEFI, CD and USB) and the PXE bundle. Nothing is
mounted but /dev and /proc for pip in the chroot."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from converters import __version__
from image import bootcfg, recipe
from image.steps import BuildError, BuildLog

# zstd reads back several times faster than xz on a slow machine (QEMU TCG
# boots, old servers). Level 9: on this root (modules, libraries, the venv)
# it is 11 % smaller than level 3 in 14x the time, and level 15 only 1.5 %
# smaller again in 7x more (measured with zstd -T1 on the build host).
# 1 MiB blocks compress best, and squashfs reads lazily anyway.
SQUASHFS_ARGS = ["-comp", "zstd", "-Xcompression-level", "9", "-b", "1M"]
ISO_NAME = "ferry-live.iso"


@dataclass(frozen=True)
class Outputs:
    directory: Path

    @property
    def iso(self) -> Path:
        return self.directory / ISO_NAME

    @property
    def pxe(self) -> Path:
        return self.directory / "pxe"

    @property
    def kernel(self) -> Path:
        return self.pxe / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.pxe / "initrd.img"

    @property
    def ipxe(self) -> Path:
        return self.pxe / "ferry.ipxe"

    @property
    def sums(self) -> Path:
        return self.directory / "SHA256SUMS"

    @property
    def log(self) -> Path:
        return self.directory / "build.log"

    def files(self) -> list[Path]:
        return [self.iso, self.kernel, self.initrd, self.ipxe, self.pxe / "grub.cfg"]


def ferry_wheel(work: Path, log: BuildLog) -> Path:
    """A wheel of the working tree, built from a copy so that nothing is
    written into the tree (setuptools would use its build/ folder)."""
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    for path in recipe.source_files():
        dest = src / path.relative_to(recipe.REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    dist = work / "dist"
    log.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            dist,
            src,
        ]
    )
    (wheel,) = dist.glob("ferry-*.whl")
    return wheel


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def remove_tree(path: Path) -> None:
    """rmtree, refusing while anything is mounted below: a bind mount of
    /dev left in the chroot would take the host's device nodes with it."""
    busy = mounts_under(path)
    if busy:
        raise BuildError(f"not removing {path}: still mounted: {', '.join(busy)}")
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def chroot_mounts(root: Path):
    mounted = []
    try:
        for name in ("dev", "proc"):
            target = root / name
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", "--bind", f"/{name}", target], check=True)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", target], check=False)


def install_ferry(root: Path, wheel: Path, keys: recipe.Keys, log: BuildLog) -> None:
    shutil.copy2(wheel, root / "tmp" / wheel.name)
    with chroot_mounts(root):
        log.run(
            [
                "chroot",
                root,
                "/opt/ferry/bin/pip",
                "install",
                "--no-deps",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--force-reinstall",
                f"/tmp/{wheel.name}",
            ]
        )
    (root / "tmp" / wheel.name).unlink()
    add_package_data(root, log)
    built = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(root / "etc/ferry-live", "a") as f:
        f.write(f"version={__version__}\nkey={keys.image}\n")
        f.write(f"medium={keys.medium_label}\nbuilt={built}\n")


def add_package_data(root: Path, log: BuildLog) -> None:
    """Files of ferry's packages that the wheel left out (pyproject.toml
    declares no package data, so setuptools ships only modules: e.g. the
    TUI's stylesheet), copied beside the installed modules, and said so."""
    (site,) = root.glob("opt/ferry/lib/python3*/site-packages")
    for path in recipe.source_files():
        rel = path.relative_to(recipe.REPO)
        if rel.parts[0] not in recipe.SOURCE_DIRS or (site / rel).exists():
            continue
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, site / rel)
        log.say(
            f"warning: the ferry wheel lacks {rel} (no package data in "
            "pyproject.toml); copied into the image"
        )


def take_boot_files(root: Path, work: Path) -> tuple[Path, Path]:
    """The kernel and the chroot's small initramfs, out of the root: nothing
    in the live system needs /boot."""
    (kernel,) = sorted((root / "boot").glob("vmlinuz-*"))
    (initrd,) = sorted((root / "boot").glob("initrd.img-*"))
    shutil.move(kernel, work / "vmlinuz")
    shutil.move(initrd, work / "initrd-base.img")
    for leftover in (root / "boot").iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        (root / link).unlink(missing_ok=True)
    return work / "vmlinuz", work / "initrd-base.img"


def pack_initrd(root: Path, base_initrd: Path, work: Path, log: BuildLog) -> Path:
    """initrd.img = cpio(ferry/root.squashfs) + the chroot's initramfs. The
    uncompressed archive goes first, as early microcode does: the kernel
    unpacks archives one after the other, and a compressed one last."""
    for mountpoint in ("proc", "sys", "dev", "run", "tmp"):
        (root / mountpoint).mkdir(exist_ok=True)
    staging = work / "cpio"
    (staging / "ferry").mkdir(parents=True)
    squashfs = staging / "ferry" / "root.squashfs"
    log.run(["mksquashfs", root, squashfs, "-noappend", "-no-progress", *SQUASHFS_ARGS])
    archive = work / "root.cpio"
    with open(archive, "wb") as out:
        listing = "ferry\nferry/root.squashfs\n"
        proc = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            input=listing.encode(),
            cwd=staging,
            stdout=out,
            stderr=subprocess.PIPE,
        )
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    initrd = work / "initrd.img"
    with open(initrd, "wb") as out:
        for part in (archive, base_initrd):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    squashfs.unlink()
    archive.unlink()
    return initrd


def make_iso(
    kernel: Path,
    initrd: Path,
    out: Path,
    keys: recipe.Keys,
    log: BuildLog,
    kernel_keys: str = "",
) -> None:
    tree = out.parent / f"{out.name}.tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "boot" / "grub").mkdir(parents=True)
    os.link(kernel, tree / "boot" / "vmlinuz")
    os.link(initrd, tree / "boot" / "initrd.img")
    (tree / "boot" / "grub" / "grub.cfg").write_text(
        bootcfg.iso_grub_cfg(keys.medium_label, kernel_keys)
    )
    # grub-mkrescue makes El Torito entries for BIOS (i386-pc) and UEFI
    # (x86_64-efi) and an MBR with the EFI image as a partition, so the same
    # file boots as a CD and written to a USB stick; arguments after `--`
    # go to xorriso.
    log.run(["grub-mkrescue", "-o", out, tree, "--", "-volid", keys.medium_label])
    shutil.rmtree(tree)


def make_pxe(kernel: Path, initrd: Path, pxe: Path) -> None:
    pxe.mkdir(parents=True)
    os.link(kernel, pxe / "vmlinuz")
    os.link(initrd, pxe / "initrd.img")
    (pxe / "ferry.ipxe").write_text(bootcfg.ipxe_script())
    (pxe / "grub.cfg").write_text(bootcfg.netboot_grub_cfg())


def write_sums(outputs: Outputs) -> None:
    lines = []
    for path in outputs.files():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        lines.append(f"{h.hexdigest()}  {path.relative_to(outputs.directory)}\n")
    outputs.sums.write_text("".join(lines))


def assemble(
    chroot_tar: Path, keys: recipe.Keys, work: Path, out: Path, log: BuildLog
) -> Outputs:
    """Everything after the chroot, into `out` (which must not exist)."""
    remove_tree(work)
    root = work / "root"
    root.mkdir(parents=True)
    with log.step("install ferry from the working tree"):
        log.run(
            [
                "tar",
                "-C",
                root,
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "-xpf",
                chroot_tar,
            ]
        )
        install_ferry(root, ferry_wheel(work, log), keys, log)
    with log.step("initramfs (root as squashfs)"):
        kernel, base_initrd = take_boot_files(root, work)
        initrd = pack_initrd(root, base_initrd, work, log)
        remove_tree(root)
    outputs = Outputs(out)
    out.mkdir(parents=True)
    with log.step("ISO and PXE bundle"):
        make_iso(kernel, initrd, outputs.iso, keys, log)
        make_pxe(kernel, initrd, outputs.pxe)
        write_sums(outputs)
    remove_tree(work)
    return outputs


def scratch(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="work-", dir=parent))
