"""Growing a deployed disk to its target: the last partition is extended to
the end of the disk (a GPT's backup header moved there first) and its
filesystem grown to fill it: ext2/3/4 with resize2fs after a forced fsck,
xfs with xfs_growfs on a private mount.

An LVM physical volume as the last partition: pvresize, then the root LV
(named root, or the only one) takes the new extents with lvextend, and its
filesystem is grown. All of it without device-mapper: the LVM tools change
only metadata (``--driverloaded n``, ``--devices`` naming our PV alone, so
a VG of the live system with the same name is never touched), and the
filesystem is reached through a loop device over the LV's extents, which
after lvextend of the last LV are one contiguous range of the PV. Nothing
is activated, so the live system holds no device of the new disk.

Not yet: an LV made of several ranges, logical partitions of an MBR
extended partition; a swap partition at the end is left as it is. Each of
those is reported, and the disk stays as written, which boots.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, replace

from converters.events import EventStream
from converters.fixups import chroot_backend

# Less free space than this after the last partition is alignment slack,
# not worth a resize.
MIN_GROWTH = 16 << 20
GROWABLE = ("ext2", "ext3", "ext4", "xfs")
LVM_PV = "LVM2_member"


class GrowError(Exception):
    pass


@dataclass(frozen=True)
class GrowReport:
    partition: int
    fstype: str
    old_size: int
    new_size: int
    # An LVM PV: "vg/lv" of the root LV, its filesystem and new size.
    lv: str = ""
    lv_fstype: str = ""
    lv_size: int = 0


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


def grow(target: str, events: EventStream, keep_free: int = 0) -> GrowReport | None:
    """Grow the last partition of ``target`` and its filesystem, leaving
    ``keep_free`` bytes at the disk's end (for an ESP added next); None when
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
    if fstype not in (*GROWABLE, LVM_PV):
        events.log(
            f"grow: partition {number} holds {fstype or 'no filesystem'}: not grown",
            "warning",
        )
        return None
    old = int(last["size"]) * sector
    _run(
        "sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(number), target,
        input=f", {_new_size(target, last, sector, keep_free)}\n",
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
        if fstype == LVM_PV:
            events.log(f"grow: partition {number} (LVM PV) {old} -> {new} bytes")
            return grow_lvm(device, GrowReport(number, fstype, old, new), events)
        _grow_filesystem(device, fstype)
    events.log(f"grow: partition {number} ({fstype}) {old} -> {new} bytes")
    return GrowReport(number, fstype, old, new)


def _new_size(target: str, last: dict, sector: int, keep_free: int) -> str:
    """sfdisk's size field: "+" (to the end), or the sectors that end the
    partition on a MiB boundary ``keep_free`` bytes before the disk's end."""
    if not keep_free:
        return "+"
    disk = int(_run("blockdev", "--getsize64", target))
    align = (1 << 20) // sector
    end = (disk - keep_free) // sector // align * align
    return str(max(end - int(last["start"]), int(last["size"])))


def _lvm(command: str, pv: str, *args: str) -> str:
    return _run(
        "env", "LVM_SUPPRESS_FD_WARNINGS=1", "lvm", command, "--devices", pv,
        "--driverloaded", "n", *args,
    )  # fmt: skip


def _lvm_report(command: str, pv: str, key: str, *args: str) -> list[dict]:
    out = _lvm(command, pv, "--reportformat", "json", "--units", "b", "--nosuffix",
               *args)  # fmt: skip
    return json.loads(out)["report"][0][key]


def grow_lvm(pv: str, report: GrowReport, events: EventStream) -> GrowReport:
    """pvresize ``pv`` (its partition already extended), lvextend the root
    LV into the new extents, grow its filesystem."""
    _lvm("pvresize", pv, "-q", pv)
    lvs = _lvm_report("lvs", pv, "lv", "-o", "vg_name,lv_name,lv_size")
    roots = [lv for lv in lvs if lv["lv_name"] == "root"] or (
        lvs if len(lvs) == 1 else []
    )
    if not roots:
        names = ", ".join(f"{lv['vg_name']}/{lv['lv_name']}" for lv in lvs)
        events.log(f"grow: no root LV among {names or 'none'}: PV grown only")
        return report
    name = f"{roots[0]['vg_name']}/{roots[0]['lv_name']}"
    free = _lvm_report("vgs", pv, "vg", "-o", "vg_free_count")[0]["vg_free_count"]
    if int(free) > 0:
        _lvm("lvextend", pv, "-q", "-l", "+100%FREE", name)
    segments = _lvm_report(
        "lvs", pv, "seg", "--segments", "-o", "seg_pe_ranges,vg_extent_size", name
    )
    pe_start = int(_lvm_report("pvs", pv, "pv", "-o", "pe_start")[0]["pe_start"])
    ranges = segments[0]["seg_pe_ranges"].split() if len(segments) == 1 else []
    if len(ranges) != 1:
        events.log(
            f"grow: {name} is made of several extent ranges: LV grown, its "
            "filesystem not (it boots at its old size)",
            "warning",
        )
        return report
    first, last = (int(n) for n in ranges[0].rsplit(":", 1)[1].split("-"))
    extent = int(segments[0]["vg_extent_size"])
    offset, size = pe_start + first * extent, (last - first + 1) * extent
    window = _run(
        "losetup", "-f", "--show", "--offset", str(offset), "--sizelimit",
        str(size), pv,
    ).strip()  # fmt: skip
    try:
        fstype = chroot_backend.probe(window).get("TYPE", "")
        if fstype not in GROWABLE:
            events.log(f"grow: {name} holds {fstype or 'no filesystem'}: not grown")
            return replace(report, lv=name, lv_size=size)
        _grow_filesystem(window, fstype)
    finally:
        subprocess.run(["losetup", "-d", window], capture_output=True, check=False)
    events.log(f"grow: {name} ({fstype}) now {size} bytes")
    return replace(report, lv=name, lv_fstype=fstype, lv_size=size)


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
