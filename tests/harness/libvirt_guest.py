"""The migration tests' small guest (migration_guest) as a libvirt domain:
TCG (`type='qemu'`), its kernel and writer initramfs, its console on a file
in the daemon's own log directory.

libvirt rounds a guest's memory up to whole MiB (qemuDomainAlignMemorySizes),
and 257 MiB is a multiple of 256 KiB: QEMU 7.2 then takes the dirty-bitmap
fast path that loses TCG guests' writes (migration_guest.Guest.memory_kib),
and the destination's kernel panicked after the first libvirt migration tried
here. So the domain's emulator is a small wrapper that gives QEMU the memory
size the QMP tests use, 256 MiB + 8 KiB, in place of libvirt's rounding."""

from __future__ import annotations

import re
import time
from pathlib import Path
from xml.sax.saxutils import escape

from tests.harness.libvirt_daemons import Daemon
from tests.harness.migration_guest import (
    DISK_CHECK,
    PROGRESS,
    Guest,
    Progress,
    Writer,
    guest_image,
    make_disk,
)

NAME = "ferry-writer"
MEMORY_KIB = Guest.__dataclass_fields__["memory_kib"].default
CONSOLE = f"/var/log/libvirt/qemu/{NAME}.console"
# In each daemon's own directory: without shared storage, each side has its
# own disk, and libvirt mirrors the source's into the destination's.
DISK = f"/var/lib/libvirt/images/{NAME}.qcow2"

WRAPPER = """#!/usr/bin/python3
# QEMU with {kib} KiB of RAM where libvirt asked for {mib} MiB (see
# tests/harness/libvirt_guest.py); every other argument passes unchanged.
import os, sys
args = sys.argv[1:]
for i, a in enumerate(args):
    if i and args[i - 1] == "-m" and a == "{mib}":
        args[i] = "{kib}k"
    args[i] = args[i].replace('"id":"pc.ram","size":{mib_bytes}',
                              '"id":"pc.ram","size":{kib_bytes}')
os.execv("{qemu}", ["{qemu}", *args])
"""


def write_wrapper(path: Path, qemu: str = "/usr/bin/qemu-system-x86_64") -> Path:
    mib = -(-MEMORY_KIB // 1024)
    path.write_text(
        WRAPPER.format(
            kib=MEMORY_KIB,
            mib=mib,
            mib_bytes=mib << 20,
            kib_bytes=MEMORY_KIB << 10,
            qemu=qemu,
        )
    )
    path.chmod(0o755)
    return path


def make_disks(size_mb: int, *daemons: Daemon) -> None:
    """An empty qcow2 of the same size where each daemon sees DISK."""
    for daemon in daemons:
        path = daemon.host_path(DISK)
        path.parent.mkdir(parents=True, exist_ok=True)
        make_disk(path, size_mb)


def domain_xml(writer: Writer, emulator: Path, disk: bool = False) -> str:
    kernel, initramfs = guest_image()
    drive = (
        f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{DISK}'/>
      <target dev='vda' bus='virtio'/>
    </disk>"""
        if disk
        else ""
    )
    return f"""<domain type='qemu'>
  <name>{NAME}</name>
  <memory unit='KiB'>{MEMORY_KIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initramfs}</initrd>
    <cmdline>{escape(writer.append())}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{emulator}</emulator>
    {drive}
    <serial type='file'>
      <source path='{CONSOLE}' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Console:
    """The guest's serial console as one daemon's QEMU wrote it."""

    def __init__(self, daemon: Daemon) -> None:
        self.path = daemon.host_path(CONSOLE)
        self.mark = 0

    def text(self) -> str:
        if not self.path.exists():
            return ""
        return self.path.read_bytes()[self.mark :].decode(errors="replace")

    def skip_past(self) -> None:
        """Read only what comes next (a guest back on this daemon)."""
        self.mark = self.path.stat().st_size if self.path.exists() else 0

    def progress(self) -> list[Progress]:
        return [
            Progress(float(t), int(p), int(r))
            for t, p, r in PROGRESS.findall(self.text())
        ]

    def wait_progress(self, count: int, timeout: float) -> list[Progress]:
        """Until `count` more progress lines than now (or the timeout)."""
        want = len(self.progress()) + count
        deadline = time.monotonic() + timeout
        while len(self.progress()) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.progress()

    def disk_checks(self) -> list[tuple[int, int, int, str]]:
        """The writer's whole-disk checks: (verify, blocks, bad, result)."""
        found = DISK_CHECK.findall(self.text())
        return [(int(v), int(n), int(b), res) for v, n, b, res in found]

    def crashed(self) -> bool:
        return bool(re.search(r"Kernel panic|BUG:|Oops", self.text()))
