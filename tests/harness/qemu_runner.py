"""Boot a test machine in QEMU (TCG here, KVM where it works) with a
hardware profile, from its disk, an ISO (CD or USB) or PXE, and wait for a
line on its serial console. QEMU is ended by its own pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from converters import accel
from tests.harness.profiles import Profile

DEFAULT_MAC = "52:54:00:fe:01:01"
MARKER = re.compile(r"FERRY-BOOTED (.*)")


@dataclass(frozen=True)
class BootMarker:
    """The fields of a `FERRY-BOOTED key=value ...` line."""

    fields: dict[str, str]
    seconds: float  # from QEMU start to the marker

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    @classmethod
    def parse(cls, line: str, seconds: float) -> BootMarker:
        pairs = (w.split("=", 1) for w in line.split() if "=" in w)
        return cls({k: v for k, v in pairs}, seconds)


@dataclass
class QemuMachine:
    profile: Profile
    workdir: Path
    disks: list[Path] = field(default_factory=list)  # qcow2 overlays or images
    cdrom: Path | None = None
    usb: Path | None = None
    pxe: tuple[Path, str] | None = None  # TFTP root and boot file
    mac: str = DEFAULT_MAC
    memory_mb: int = 1024
    append_netdev: str = ""  # extra user-net options (e.g. hostfwd)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def console_log(self) -> Path:
        return self.workdir / f"console-{self.profile.name}.log"

    def command(self) -> list[str]:
        p = self.profile
        cmd = [
            accel.QEMU,
            *accel.detect().qemu_args(),
            "-machine",
            p.machine,
            "-m",
            str(self.memory_mb),
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            f"file:{self.console_log}",
            "-no-reboot",
        ]
        cmd += p.firmware_args(self.workdir) + p.controller_args()
        for i, disk in enumerate(self.disks):
            fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
            cmd += p.disk_args(i, disk, fmt, bootindex=10 + i)
        if self.cdrom:
            cmd += [
                "-drive",
                f"if=none,id=cd0,file={self.cdrom},format=raw,media=cdrom,readonly=on",
                "-device",
                "ide-cd,drive=cd0,bootindex=1"
                + (",bus=ide.2" if p.machine == "q35" else ""),
            ]
        if self.usb:
            cmd += [
                "-device",
                "qemu-xhci,id=xhci",
                "-drive",
                f"if=none,id=usb0,file={self.usb},format=raw,readonly=on",
                "-device",
                "usb-storage,bus=xhci.0,drive=usb0,bootindex=1",
            ]
        netdev = "user,id=net0"
        if self.pxe:
            root, bootfile = self.pxe
            netdev += f",tftp={root},bootfile={bootfile}"
        cmd += p.nic_args(self.mac, netdev + self.append_netdev)
        if self.pxe:
            cmd[-1] += ",bootindex=0"
        return cmd + self.extra_args

    def start(self) -> QemuMachine:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        self.started = time.monotonic()
        # QEMU's own messages (e.g. a bad option) land in qemu.log, which the
        # workdir fixture keeps for a failed test.
        with open(self.workdir / "qemu.log", "wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")

    def wait_for(self, pattern: str | re.Pattern, timeout: float) -> re.Match | None:
        """First match of `pattern` on the console, or None after `timeout`
        or when QEMU exits."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.console())
            if found:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return regex.search(self.console())
            time.sleep(0.5)

    def wait_marker(self, timeout: float = 300) -> BootMarker | None:
        found = self.wait_for(MARKER, timeout)
        if not found:
            return None
        return BootMarker.parse(found.group(1), time.monotonic() - self.started)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> QemuMachine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def overlay(base: Path, path: Path) -> Path:
    """A qcow2 overlay so a test never changes the cached base image."""
    fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(base),
            "-F",
            fmt,
            str(path),
        ],
        check=True,
    )
    return path
