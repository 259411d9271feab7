"""Save the session's log to a USB stick: the one way a log leaves a
machine whose network is the problem."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from converters.inventory import Disk, Machine


def candidates(machine: Machine, include_loop: bool = False) -> list[tuple[str, str]]:
    """(device path, description) of what a log may be written to:
    partitions of removable disks, or the whole stick when it has none;
    loop devices too when asked (tests)."""
    found = []
    for disk in machine.disks:
        if not (disk.removable or (include_loop and disk.transport == "loop")):
            continue
        if disk.boot_medium or disk.read_only:
            continue
        found += _targets(disk)
    return found


def _targets(disk: Disk) -> list[tuple[str, str]]:
    what = " ".join(x for x in (disk.model, disk.serial) if x)
    if not disk.partitions:
        return [(disk.path, f"{disk.name}  whole disk  {what}")]
    return [
        (f"/dev/{p.name}", f"{p.name}  {p.fstype or '?'}  {p.label}  {what}")
        for p in disk.partitions
        if p.fstype and p.fstype not in ("swap", "LVM2_member", "linux_raid_member")
    ]


def save(device: str, lines: list[str]) -> str:
    """Write the log to a new file on ``device``; mounts it when it is not
    mounted yet and unmounts it again, so that the stick can be pulled."""
    name = f"ferry-{time.strftime('%Y%m%d-%H%M%S')}.log"
    mounted = _mount_point(device)
    if mounted:
        return _write(os.path.join(mounted, name), lines)
    with tempfile.TemporaryDirectory(prefix="ferry-logs-") as point:
        run = subprocess.run(
            ["mount", device, point], capture_output=True, text=True, timeout=60
        )
        if run.returncode != 0:
            raise OSError(f"cannot mount {device}: {run.stderr.strip()}")
        try:
            _write(os.path.join(point, name), lines)
        finally:
            subprocess.run(["umount", point], capture_output=True, timeout=60)
    return f"{device}:/{name}"


def _write(path: str, lines: list[str]) -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def _mount_point(device: str) -> str | None:
    real = os.path.realpath(device)
    with open("/proc/self/mounts") as f:
        for line in f:
            source, point = line.split()[:2]
            if os.path.realpath(source) == real:
                return point.replace("\\040", " ")
    return None
