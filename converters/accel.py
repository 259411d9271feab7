"""Which accelerator QEMU and libguestfs use on this host: KVM when it really
boots a guest kernel, otherwise TCG (software emulation).

`/dev/kvm` existing proves little: on nested or restricted hosts it opens but
`-cpu host` aborts ("failed to set MSR 0x10a") or guest kernels hang. So the
probe boots the host's own kernel with no root filesystem and waits for the
panic that says the kernel ran all the way to mounting root. The verdict is
cached per host boot, because the TCG fallback costs a timeout to discover.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from converters import cache

QEMU = "qemu-system-x86_64"
# A kernel that reached "mount root" under KVM did so within a second or two;
# 25 s lets TCG hosts finish too, so a failure is not mistaken for slowness.
PROBE_TIMEOUT = 25.0
_BOOTED = ("Unable to mount root", "VFS: Cannot open root device", "not syncing")


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str  # one sentence a user can act on

    @property
    def is_kvm(self) -> bool:
        return self.name == "kvm"

    def qemu_args(self) -> list[str]:
        if self.is_kvm:
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg", "-cpu", "max"]

    def guestfs_settings(self) -> list[str]:
        """Backend settings for libguestfs' direct backend."""
        return [] if self.is_kvm else ["force_tcg"]


def host_kernel() -> str | None:
    """The newest kernel image in /boot, which the probe boots."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"), key=os.path.getmtime)
    readable = [k for k in kernels if os.access(k, os.R_OK)]
    return readable[-1] if readable else None


def probe_kvm(kernel: str | None = None, timeout: float = PROBE_TIMEOUT) -> Accelerator:
    """Boot a kernel under KVM and report whether it ran; never cached."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return Accelerator(
            "tcg", f"/dev/kvm cannot be opened ({e.strerror}); using TCG"
        )
    kernel = kernel or host_kernel()
    if kernel is None:
        return Accelerator(
            "tcg", "no kernel in /boot to probe KVM with; using TCG to be safe"
        )
    cmd = [
        QEMU,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        kernel,
        "-append",
        "console=ttyS0 panic=-1 quiet loglevel=3",
    ]
    start = time.monotonic()
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except FileNotFoundError:
        return Accelerator("tcg", f"{QEMU} is not installed")
    except subprocess.TimeoutExpired:
        return Accelerator(
            "tcg",
            f"KVM is present but a guest kernel did not boot in {timeout:.0f} s; "
            "using TCG (software emulation, slow)",
        )
    text = out.stdout + out.stderr
    if any(sign in text for sign in _BOOTED):
        took = time.monotonic() - start
        return Accelerator("kvm", f"KVM booted a guest kernel in {took:.1f} s")
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
    return Accelerator(
        "tcg", f"KVM cannot boot guests here ({last.strip()[:160]}); using TCG"
    )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def detect(refresh: bool = False) -> Accelerator:
    """The accelerator every part of ferry uses; FERRY_ACCEL=kvm|tcg forces it."""
    forced = os.environ.get("FERRY_ACCEL")
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, f"forced by FERRY_ACCEL={forced}")
    path = cache.root() / "accel.json"
    key = {"boot_id": _boot_id(), "kernel": host_kernel()}
    if not refresh:
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return Accelerator(**saved["accelerator"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    found = probe_kvm(key["kernel"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "accelerator": asdict(found)}))
    except OSError:
        pass  # a read-only cache only costs the next caller a probe
    return found


def guestfs_environment(accel: Accelerator | None = None) -> dict[str, str]:
    """Environment for libguestfs tools run as subprocesses (virt-*, guestfish)."""
    accel = accel or detect()
    env = {"LIBGUESTFS_BACKEND": "direct"}
    if not accel.is_kvm:
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env
