"""How much of a filesystem is in use, for the Disks screen: from the
kernel when it is mounted, else from the filesystem's own superblock
(dumpe2fs, xfs_db), which reads a few blocks and writes nothing. Other
filesystems are "unknown" rather than guessed."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

TIMEOUT = 10


def used_bytes(device: str, fstype: str) -> int | None:
    """Bytes in use on ``device`` (a partition or a file holding a
    filesystem), or None when it cannot be told."""
    mount = mount_point(device)
    if mount:
        st = os.statvfs(mount)
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    if fstype in ("ext2", "ext3", "ext4"):
        return _ext(device)
    if fstype == "xfs":
        return _xfs(device)
    return None


def mount_point(device: str) -> str | None:
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return None
    if not rdev:
        return None  # a file, not a block device
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] == wanted:
            return fields[4].replace("\\040", " ")
    return None


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _fields(text: str, sep: str) -> dict[str, int]:
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(sep)
        if re.fullmatch(r"\s*\d+\s*", value):
            found[key.strip()] = int(value)
    return found


def _ext(device: str) -> int | None:
    f = _fields(_out(["dumpe2fs", "-h", device]), ":")
    try:
        return (f["Block count"] - f["Free blocks"]) * f["Block size"]
    except KeyError:
        return None


def _xfs(device: str) -> int | None:
    argv = ["xfs_db", "-r", "-c", "sb 0", "-c", "print dblocks fdblocks blocksize"]
    f = _fields(_out([*argv, device]), "=")
    try:
        return (f["dblocks"] - f["fdblocks"]) * f["blocksize"]
    except KeyError:
        return None
