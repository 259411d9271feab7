"""Growing a deployed disk to its target: the last partition is extended to
the end of the disk (a GPT's backup header moved there first) and its
filesystem grown to fill it: ext2/3/4 with resize2fs after a forced fsck,
xfs with xfs_growfs on a private mount.

Not yet: an LVM physical volume with its root LV (pvresize needs the
device-mapper the test hosts lack), logical partitions of an MBR extended
partition; a swap partition at the end is left as it is. Each of those is
reported, and the disk stays exactly as written, which boots.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass

from converters.events import EventStream
from converters.fixups import chroot_backend

# Less free space than this after the last partition is alignment slack,
# not worth a resize.
MIN_GROWTH = 16 << 20
GROWABLE = ("ext2", "ext3", "ext4", "xfs")


class GrowError(Exception):
    pass


@dataclass(frozen=True)
class GrowReport:
    partition: int
    fstype: str
    old_size: int
    new_size: int


def _run(*argv: str, input: str | None = None, ok=(0,)) -> str:
    out = subprocess.run(
        argv, input=input, capture_output=True, text=True, errors="replace"
    )
    if out.returncode not in ok:
        detail = (out.stderr or out.stdout).strip().splitlines()[-1:]
        raise GrowError(f"{argv[0]} failed: {' '.join(detail) or out.returncode}")
    return out.stdout


def _table(target: str) -> dict:
    return json.loads(_run("sfdisk", "--json", target))["partitiontable"]


def grow(target: str, events: EventStream) -> GrowReport | None:
    """Grow the last partition of ``target`` and its filesystem; None when
    there is nothing to do or it cannot be done (said in the events)."""
    try:
        table = _table(target)
    except GrowError:
        # A whole-disk filesystem, or no table sfdisk knows: nothing to grow.
        events.log(f"grow: {target} has no partition table: not grown", "warning")
        return None
    parts = table.get("partitions", [])
    if not parts:
        events.log(f"grow: {target} has no partitions", "warning")
        return None
    sector = int(table.get("sectorsize", 512))
    if table.get("label") == "gpt":
        # The backup GPT sits where the image ended; move it to the disk's
        # end first, or the free space is not usable.
        _run("sfdisk", "--no-reread", "--no-tell-kernel", "--relocate",
             "gpt-bak-std", target)  # fmt: skip
        table = _table(target)
        parts = table["partitions"]
    last = max(parts, key=lambda p: int(p["start"]))
    number = chroot_backend.partition_number(last["node"], len(parts))
    if table.get("label") == "dos" and number > 4:
        events.log("grow: the last partition is a logical one: not grown", "warning")
        return None
    with contextlib.ExitStack() as stack:
        nodes = chroot_backend.partitions(target, stack)
        node = next(n for n in nodes if n.number == number)
        fstype = chroot_backend.probe(node.device).get("TYPE", "")
    if fstype not in GROWABLE:
        events.log(
            f"grow: partition {number} holds {fstype or 'no filesystem'}: not grown",
            "warning",
        )
        return None
    old = int(last["size"]) * sector
    _run(
        "sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(number), target,
        input=", +\n",
    )  # fmt: skip
    subprocess.run(["blockdev", "--rereadpt", target], capture_output=True)
    new = (
        int(
            next(
                p
                for p in _table(target)["partitions"]
                if chroot_backend.partition_number(p["node"], 0) == number
            )["size"]
        )
        * sector
    )
    if new - old < MIN_GROWTH:
        events.log(f"grow: partition {number} has no room to grow")
        return None
    with contextlib.ExitStack() as stack:
        nodes = chroot_backend.partitions(target, stack)
        device = next(n for n in nodes if n.number == number).device
        _grow_filesystem(device, fstype)
    events.log(f"grow: partition {number} ({fstype}) {old} -> {new} bytes")
    return GrowReport(number, fstype, old, new)


def _grow_filesystem(device: str, fstype: str) -> None:
    if fstype.startswith("ext"):
        # resize2fs insists on a freshly checked filesystem; 1 means errors
        # were corrected, which after a verified copy is only the clean flag.
        _run("e2fsck", "-f", "-y", device, ok=(0, 1))
        _run("resize2fs", device)
        return
    where = tempfile.mkdtemp(prefix="ferry-grow-")
    _run("mount", "-t", "xfs", device, where)
    try:
        _run("xfs_growfs", where)
    finally:
        _run("umount", where)
        with contextlib.suppress(OSError):
            os.rmdir(where)
