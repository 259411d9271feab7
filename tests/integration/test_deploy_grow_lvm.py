"""An image whose last partition is an LVM physical volume with its root LV,
deployed onto a larger disk: the PV, the root LV and its ext4 fill it.

This host has no device-mapper, so nothing here is activated, in the image
or on the target (as in ``ferry deploy`` itself): the image's VG and LV are
made with metadata only (``--driverloaded n``, ``lvcreate -an -Zn``) and
its ext4 put on the LV's extents through a loop device; after the deploy
the LVM tools read the target's metadata back, and e2fsck and dumpe2fs read
the filesystem at the LV's extents the same way. What is not proven here:
a kernel activating the grown LV (the boot tests' images have no LVM)."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

from test_deploy_write import ferry, loop_device, old_disk

MiB = 1 << 20
VG = "ferrygrowvg"


def run(*argv, **kw) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, **kw
    ).stdout


def lvm(command: str, pv: str, *args) -> str:
    return run(
        "env", "LVM_SUPPRESS_FD_WARNINGS=1", "lvm", command, "--devices", pv,
        "--driverloaded", "n", *args,
    )  # fmt: skip


def report(command: str, pv: str, key: str, *fields) -> list[dict]:
    out = lvm(command, pv, "--reportformat", "json", "--units", "b", "--nosuffix",
              "-o", ",".join(fields))  # fmt: skip
    return json.loads(out)["report"][0][key]


@contextmanager
def window(dev: str, offset: int, size: int, writable: bool = False):
    args = ["losetup", "-f", "--show", "--offset", offset, "--sizelimit", size]
    node = run(*args, *([] if writable else ["-r"]), dev).strip()
    try:
        yield node
    finally:
        subprocess.run(["losetup", "-d", node], check=False)


@contextmanager
def root_lv(pv: str, writable: bool = False):
    """The root LV's extents (one range) as a loop device, and its size."""
    (seg,) = report("lvs", pv, "lv", "seg_pe_ranges", "vg_extent_size")
    pe_start = int(report("pvs", pv, "pv", "pe_start")[0]["pe_start"])
    first, last = (int(n) for n in seg["seg_pe_ranges"].rsplit(":", 1)[1].split("-"))
    extent = int(seg["vg_extent_size"])
    size = (last - first + 1) * extent
    with window(pv, pe_start + first * extent, size, writable) as node:
        yield node, size


def ext4_bytes(node: str) -> int:
    out = run("dumpe2fs", "-h", node)
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def lvm_image(path: Path) -> int:
    """An MBR disk whose only partition is a PV of VG holding LV root with
    an ext4; returns the filesystem's size."""
    run("truncate", "-s", 64 * MiB, path)
    run("sfdisk", "-q", path, input="label: dos\n1MiB,,8e\n")
    with loop_device(path) as disk, window(disk, MiB, 63 * MiB, True) as pv:
        lvm("pvcreate", pv, "-q", pv)
        lvm("vgcreate", pv, "-q", VG, pv)
        lvm("lvcreate", pv, "-q", "-an", "-Zn", "-y", "-L", "40M", "-n", "root", VG)
        with root_lv(pv, writable=True) as (node, _):
            run("mkfs.ext4", "-q", "-F", node)
            return ext4_bytes(node)


def test_an_lvm_root_grows_with_its_pv_and_ext4_to_fill_a_larger_disk(tmp_path):
    image = tmp_path / "lvm.raw"
    fs_before = lvm_image(image)
    disk = old_disk(tmp_path / "disk.img", 160 * MiB)
    with loop_device(disk) as dev:
        run_ = ferry(
            "--image", str(image), "--target", dev, "--confirm", Path(dev).name,
            "--no-fixups",
        )  # fmt: skip
        assert run_.returncode == 0, run_.stderr
        part = json.loads(run("sfdisk", "--json", dev))["partitiontable"]
        (p,) = part["partitions"]
        start, size = int(p["start"]) * 512, int(p["size"]) * 512
        with window(dev, start, size) as pv:
            (pv_info,) = report("pvs", pv, "pv", "pv_size", "pv_free")
            (lv,) = report("lvs", pv, "lv", "vg_name", "lv_name", "lv_size")
            with root_lv(pv) as (node, lv_size):
                fsck = subprocess.run(["e2fsck", "-fn", node], capture_output=True)
                fs_after = ext4_bytes(node)
    assert start + size == 160 * MiB
    # The PV fills the partition (less its metadata), the root LV every
    # extent of it, the ext4 the whole LV.
    assert size - 4 * MiB <= int(pv_info["pv_size"]) <= size
    assert int(pv_info["pv_free"]) == 0
    assert (lv["vg_name"], lv["lv_name"]) == (VG, "root")
    assert int(lv["lv_size"]) == lv_size > 150 * MiB
    assert fs_before < 41 * MiB and fs_after == lv_size
    assert fsck.returncode == 0, fsck.stdout
    assert f"grow: {VG}/root (ext4) now {lv_size} bytes" in run_.stderr
