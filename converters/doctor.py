"""`ferry doctor`: can this machine do its role? One line per check, with the
fix. The KVM-side server needs QEMU, qemu-nbd/libnbd and libguestfs; the live
side needs partclone and the Python bindings for parted and udev, and live
capture of a running server tracefs with the block tracepoints.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converters import accel
from converters.write_tracker import EVENTS, TRACEFS

OK, WARN, FAIL = "OK", "WARN", "FAIL"
ROLES = ("kvm", "live")
# Below this a capture of even a small server will not fit; above the warning
# line a few typical disks will.
FREE_FAIL = 2 << 30
FREE_WARN = 50 << 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}"
        return text + (f" (fix: {self.fix})" if self.fix and self.status != OK else "")


def _version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown version"


def check_tool(name: str, cmd: list[str], package: str, required: bool) -> Check:
    version = _version(cmd)
    if version is None:
        return Check(
            name, FAIL if required else WARN, "not found", f"apt-get install {package}"
        )
    return Check(name, OK, version)


def check_module(name: str, module: str, package: str, required: bool) -> Check:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return Check(
            name,
            FAIL if required else WARN,
            f"cannot import {module}: {e}",
            f"apt-get install {package}",
        )
    return Check(name, OK, f"{module} {getattr(mod, '__version__', '')}".strip())


def check_accelerator() -> Check:
    found = accel.detect()
    if found.is_kvm:
        return Check("kvm", OK, found.reason)
    return Check(
        "kvm",
        WARN,
        f"{found.reason}; guests run in TCG software emulation",
        "run on a host whose KVM boots guests for full speed",
    )


def check_libnbd() -> Check:
    try:
        import nbd

        return Check("libnbd", OK, f"libnbd {nbd.NBD().get_version()}")
    except ImportError as e:
        return Check(
            "libnbd", FAIL, f"cannot import nbd: {e}", "apt-get install python3-libnbd"
        )


def check_guestfs(timeout: float = 180.0) -> Check:
    """Launch the appliance once: the only proof that conversions will run."""
    try:
        import guestfs
    except ImportError as e:
        return Check(
            "libguestfs",
            FAIL,
            f"cannot import guestfs: {e}",
            "apt-get install python3-guestfs libguestfs-tools",
        )
    found = accel.detect()
    result: list[Check] = []

    def launch() -> None:
        g = guestfs.GuestFS(python_return_dict=True)
        try:
            g.set_backend("direct")
            g.set_backend_settings(found.guestfs_settings())
            g.add_drive_scratch(16 << 20)
            g.launch()
            v = g.version()
            mode = "KVM" if found.is_kvm else "TCG (force_tcg)"
            detail = (
                f"appliance boots ({v['major']}.{v['minor']}.{v['release']}, {mode})"
            )
            result.append(Check("libguestfs", OK, detail))
        except RuntimeError as e:
            result.append(
                Check(
                    "libguestfs",
                    FAIL,
                    f"appliance failed: {e}",
                    "run libguestfs-test-tool for details",
                )
            )
        finally:
            g.close()

    worker = threading.Thread(target=launch, daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return Check(
            "libguestfs",
            FAIL,
            f"appliance did not start in {timeout:.0f} s",
            "run libguestfs-test-tool for details",
        )
    return result[0]


def check_libvirt(uri: str = "qemu:///system") -> Check:
    try:
        import libvirt
    except ImportError:
        return Check(
            "libvirt",
            WARN,
            "python3-libvirt missing; domains are written as XML only",
            "apt-get install python3-libvirt",
        )
    try:
        libvirt.registerErrorHandler(lambda *_: None, None)
        conn = libvirt.open(uri)
        version = conn.getLibVersion()
        conn.close()
    except libvirt.libvirtError as e:
        return Check(
            "libvirt",
            WARN,
            f"{uri} unreachable ({e}); domains are written as XML only",
            "start libvirtd (virtlogd -d; libvirtd -d)",
        )
    major, minor = version // 1_000_000, version // 1000 % 1000
    return Check("libvirt", OK, f"{uri} reachable (libvirt {major}.{minor})")


def check_ovmf() -> Check:
    if Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        return Check("ovmf", OK, "UEFI firmware for guests present")
    return Check(
        "ovmf", WARN, "missing: UEFI guests cannot boot", "apt-get install ovmf"
    )


def check_tracefs(root: Path = TRACEFS) -> Check:
    """Live capture's write tracker: a private ftrace instance under
    tracefs with the block layer's tracepoints (write_tracker.py). Made and
    removed here for real, which is what lockdown or missing rights would
    refuse."""
    if not (root / "instances").is_dir():
        mounted = "tracefs" in Path("/proc/filesystems").read_text()
        if mounted and root == TRACEFS:
            # ferry capture --live mounts it, but only then can its events
            # be checked
            return Check(
                "tracefs",
                WARN,
                f"not mounted at {root}; live capture will mount it",
                f"mount -t tracefs nodev {root}",
            )
        return Check(
            "tracefs",
            FAIL,
            f"no tracefs at {root}: this kernel cannot track writes for live "
            "capture (needs CONFIG_FTRACE)",
            "capture from the live media instead",
        )
    missing = [e for e in EVENTS if not (root / "events/block" / e).is_dir()]
    if missing:
        return Check(
            "tracefs",
            FAIL,
            f"the kernel has no block tracepoint {', '.join(missing)}: live "
            "capture cannot track writes",
            "capture from the live media instead",
        )
    probe = root / "instances" / f"ferry-doctor-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return Check(
            "tracefs",
            FAIL,
            f"cannot make a trace instance in {root}: {e.strerror}",
            "run as root",
        )
    return Check("tracefs", OK, f"{root} with the block tracepoints")


def check_free_space(storage: Path) -> Check:
    probe = storage
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / (1 << 30):.1f} GiB free in {storage}"
    if free < FREE_FAIL:
        return Check("storage", FAIL, detail, "free space or choose --storage")
    if free < FREE_WARN:
        return Check("storage", WARN, detail, "captures of large disks may not fit")
    return Check("storage", OK, detail)


def checks_for(role: str, storage: Path) -> list[Callable[[], Check]]:
    kvm = role == "kvm"
    live = role == "live"
    common: list[Callable[[], Check]] = [
        lambda: check_tool("qemu-img", ["qemu-img", "--version"], "qemu-utils", True),
        lambda: check_tool("zstd", ["zstd", "--version"], "zstd", False),
    ]
    if kvm:
        return common + [
            check_accelerator,
            lambda: check_tool(
                "qemu", [accel.QEMU, "--version"], "qemu-system-x86", True
            ),
            lambda: check_tool(
                "qemu-nbd", ["qemu-nbd", "--version"], "qemu-utils", True
            ),
            lambda: check_tool("nbdkit", ["nbdkit", "--version"], "nbdkit", False),
            check_libnbd,
            check_guestfs,
            check_ovmf,
            check_libvirt,
            lambda: check_free_space(storage),
        ]
    assert live
    return common + [
        lambda: check_tool(
            "partclone", ["partclone.ext4", "--version"], "partclone", True
        ),
        lambda: check_module("parted", "parted", "python3-parted", True),
        lambda: check_module("pyudev", "pyudev", "python3-pyudev", True),
        check_tracefs,
    ]


def default_role() -> str:
    """The live environment marks itself; everywhere else is a KVM side."""
    return "live" if Path("/etc/ferry-live").exists() else "kvm"


def run(role: str, storage: Path, out=sys.stdout) -> int:
    failed = False
    for make in checks_for(role, storage):
        check = make()
        failed |= check.status == FAIL
        print(check.line(), file=out, flush=True)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check that this machine can do its role")
    p.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="kvm (conversion server) or live (boot media); default: "
        "live inside the ferry live environment, else kvm",
    )
    p.add_argument(
        "--storage",
        type=Path,
        default=Path("/var/lib/ferry"),
        help="where ferry serve keeps images (free-space check)",
    )
    p.add_argument(
        "--refresh",
        action="store_true",
        help="probe KVM again instead of using the cached verdict",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.refresh:
        accel.detect(refresh=True)
    return run(args.role or default_role(), args.storage)
