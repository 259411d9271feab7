"""The small guest of the migration tests: Debian's kernel from the host's
/boot plus an initramfs whose /init is the memory (and disk) writer of
`migration_writer.c`, built with `gcc -static` at test time and cached under
the ferry cache by the hash of its inputs. It boots to its first progress
line in seconds under TCG, and its dirty rate is set on the kernel command
line, so one image serves the idle, moderate, hostile and storage cases.

`Guest` starts it as a migration source or as a `-incoming defer`
destination with the same hardware, both with a QMP unix socket, and ends
each QEMU by its own pid."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from converters import accel, cache

HERE = Path(__file__).parent
WRITER_SOURCE = HERE / "migration_writer.c"
# Dependency order from modules.dep: the storage case needs virtio-blk, which
# Debian builds as modules (CONFIG_VIRTIO_BLK=m, CONFIG_VIRTIO_PCI=m).
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
)
PROGRESS = re.compile(r"FERRY-WRITER t=([\d.]+) pages=(\d+) rate=(\d+)")
DISK_CHECK = re.compile(
    r"FERRY-DISK verify=(\d+) blocks=(\d+) bad=(\d+) .*result=(\w+)"
)


def debian_kernel() -> tuple[Path, Path]:
    """The newest /boot/vmlinuz-* that has its modules in /lib/modules."""
    for image in sorted(glob.glob("/boot/vmlinuz-*"), key=os.path.getmtime)[::-1]:
        version = image.removeprefix("/boot/vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").exists():
            return Path(image), modules
    raise RuntimeError("no /boot/vmlinuz-* with modules (install linux-image-amd64)")


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev=(0, 0)) -> bytes:
    """One entry of the kernel's initramfs format: "newc" cpio
    (Documentation/driver-api/early-userspace/buffer-format.rst)."""
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    pad = b"\0" * (-len(head) % 4)
    return head + pad + data + b"\0" * (-len(data) % 4)


def build_initramfs(init: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    entries = [
        _cpio_entry("dev", stat.S_IFDIR | 0o755),
        _cpio_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _cpio_entry("proc", stat.S_IFDIR | 0o755),
        _cpio_entry("lib", stat.S_IFDIR | 0o755),
        _cpio_entry("init", stat.S_IFREG | 0o755, init),
    ]
    for name, blob in modules:
        entries.append(_cpio_entry(f"lib/{name}.ko", stat.S_IFREG | 0o644, blob))
    listing = "".join(f"/lib/{name}.ko\n" for name, _ in modules).encode()
    entries.append(_cpio_entry("modules", stat.S_IFREG | 0o644, listing))
    entries.append(_cpio_entry("TRAILER!!!", 0))
    return b"".join(entries)


def guest_image() -> tuple[Path, Path]:
    """(kernel, initramfs), building the initramfs once per source hash."""
    kernel, moddir = debian_kernel()
    found = {p.stem: p for p in moddir.rglob("*.ko") if p.stem in MODULES}
    missing = set(MODULES) - set(found)
    if missing:
        raise RuntimeError(f"{moddir} lacks modules {sorted(missing)}")
    key = cache.recipe_key(cache.file_digest(WRITER_SOURCE), kernel.name)
    out = cache.root() / "migration-guest" / key
    initramfs = out / "initramfs.cpio"
    if not initramfs.exists():
        out.mkdir(parents=True, exist_ok=True)
        binary = out / "init"
        subprocess.run(
            ["gcc", "-static", "-O2", "-Wall", "-o", str(binary), str(WRITER_SOURCE)],
            check=True,
        )
        mods = [(m, found[m].read_bytes()) for m in MODULES]
        tmp = out / "initramfs.tmp"
        tmp.write_bytes(build_initramfs(binary.read_bytes(), mods))
        tmp.rename(initramfs)
    return kernel, initramfs


@dataclass(frozen=True)
class Writer:
    """The writer's kernel command-line settings."""

    mb: int = 64  # working set, MiB
    mbps: int = 0  # dirty rate, MB/s; 0 idle, -1 unbounded
    cpu: bool = False  # CPU-bound at `mbps` instead of paced (see the .c)
    disk_mb: int = 0
    disk_mbps: int = 1
    verify: int = 3  # seconds between disk checks

    def append(self) -> str:
        return (
            f"console=ttyS0 quiet panic=-1 writer.mb={self.mb} "
            f"writer.mbps={self.mbps} writer.disk={self.disk_mb} "
            f"writer.diskmbps={self.disk_mbps} writer.verify={self.verify} "
            f"writer.cpu={int(self.cpu)}"
        )


@dataclass(frozen=True)
class Progress:
    t: float  # guest seconds since the writer started
    pages: int
    rate: int  # pages/s over the last second


@dataclass
class Guest:
    """One QEMU process of the test guest: a source, or a destination that
    waits with `-incoming defer` for `migrate-incoming`."""

    workdir: Path
    name: str  # "src" or "dst"
    writer: Writer = field(default_factory=Writer)
    # 256 MiB + 8 KiB, on purpose. QEMU before 9.0 loses guest writes when it
    # migrates a TCG guest: the fast path of its dirty-bitmap sync, taken for
    # RAM blocks that are whole multiples of 64 pages, clears dirty bits
    # without resetting the TCG TLB, so later stores through cached TLB
    # entries are never marked dirty (QEMU commit 03bfc2188f, "physmem: Fix
    # migration dirty bitmap coherency with TCG memory access", 2024). Here
    # (QEMU 7.2) the destination kernel crashed in its timer code after most
    # migrations with a writer; a size that is not a multiple of 256 KiB sends
    # QEMU down the per-page path, which resets the TLB, and the crashes
    # stopped. KVM tracks dirty pages in the host kernel and is not affected.
    memory_kib: int = 256 * 1024 + 8
    disk: Path | None = None  # qcow2 image attached as virtio-blk "vd0"
    incoming: bool = False
    proc: subprocess.Popen | None = None

    @property
    def qmp_path(self) -> Path:
        return self.workdir / f"{self.name}.qmp"

    @property
    def console_log(self) -> Path:
        return self.workdir / f"{self.name}.console"

    def command(self) -> list[str]:
        kernel, initramfs = guest_image()
        cmd = [
            accel.QEMU,
            *accel.detect().qemu_args(),
            "-machine",
            "pc",
            "-m",
            f"{self.memory_kib}k",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initramfs),
            "-append",
            self.writer.append(),
            "-serial",
            f"file:{self.console_log}",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if self.disk:
            # node-name and device id are what the engine matches the
            # source's and destination's disks by.
            cmd += [
                "-blockdev",
                f"driver=file,filename={self.disk},node-name=vd0-file",
                "-blockdev",
                "driver=qcow2,file=vd0-file,node-name=vd0-fmt",
                "-device",
                "virtio-blk-pci,drive=vd0-fmt,id=vd0",
            ]
        if self.incoming:
            cmd += ["-incoming", "defer"]
        return cmd

    def start(self) -> Guest:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        self.qmp_path.unlink(missing_ok=True)
        with open(self.workdir / f"{self.name}.qemu.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not self.qmp_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU {self.name} did not start: {self.log()}")
            time.sleep(0.05)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        path = self.workdir / f"{self.name}.qemu.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")

    def progress(self) -> list[Progress]:
        return [
            Progress(float(t), int(p), int(r))
            for t, p, r in PROGRESS.findall(self.console())
        ]

    def disk_checks(self) -> list[tuple[int, int, int, str]]:
        return [
            (int(v), int(n), int(b), res)
            for v, n, b, res in DISK_CHECK.findall(self.console())
        ]

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> bool:
        """True once `pattern` occurs `count` times on the console."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(regex.findall(self.console())) >= count:
                return True
            if not self.alive():
                break
            time.sleep(0.2)
        return len(regex.findall(self.console())) >= count

    def stop(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def make_disk(path: Path, size_mb: int) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mb}M"],
        check=True,
    )
    return path


def have_tools() -> str | None:
    """Why the migration tests cannot run here, or None."""
    for tool in (accel.QEMU, "gcc", "qemu-img"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        debian_kernel()
    except RuntimeError as e:
        return str(e)
    return None
