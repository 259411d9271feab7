"""``ferry deploy --shrink`` onto loop devices smaller than the image: the
plan is printed first, the last partition's ext4 is shrunk so that every
file reads back as it was; a smaller disk without --shrink, an xfs that
cannot shrink and used data that does not fit are refused with nothing
written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_deploy_write import ferry, loop_device, old_disk, sha256

MiB = 1 << 20
IMAGE_SIZE = 256 * MiB
DIRS = 24  # top-level folders: ext4 spreads them over the block groups


@contextmanager
def part_device(disk: str, offset: int, size: int, writable: bool = False):
    """A loop device over one partition's bytes (no partition nodes here)."""
    args = ["losetup", "-f", "--show", "--offset", str(offset)]
    args += ["--sizelimit", str(size)] + ([] if writable else ["-r"])
    dev = subprocess.run(
        [*args, disk], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def ext4_image(path: Path, label: str, files_mib: int) -> dict[str, str]:
    """A ``label`` disk with one ext4 from 1 MiB to the end, with files in
    folders spread over the whole filesystem; returns their digests."""
    subprocess.run(["truncate", "-s", str(IMAGE_SIZE), str(path)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(path)], input=f"label: {label}\n2048,,L\n", text=True,
        check=True,
    )  # fmt: skip
    size = partition(path)["size"] * 512
    digests = {}
    with part_device(str(path), MiB, size, writable=True) as dev:
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
        with tempfile.TemporaryDirectory() as mnt:
            subprocess.run(["mount", dev, mnt], check=True)
            try:
                per_file = files_mib * MiB // DIRS
                for i in range(DIRS):
                    folder = Path(mnt) / f"d{i:02d}"
                    folder.mkdir()
                    data = hashlib.shake_256(str(i).encode()).digest(per_file)
                    (folder / "f").write_bytes(data)
                    digests[f"d{i:02d}/f"] = hashlib.sha256(data).hexdigest()
            finally:
                subprocess.run(["umount", mnt], check=True)
    return digests


def partition(disk) -> dict:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], check=True, capture_output=True
        ).stdout
    )["partitiontable"]
    (part,) = table["partitions"]
    return part


def files_of(dev: str, offset: int, size: int) -> dict[str, str]:
    with (
        part_device(dev, offset, size) as part,
        tempfile.TemporaryDirectory() as mnt,
    ):
        subprocess.run(["mount", "-o", "ro,noload", part, mnt], check=True)
        try:
            return {
                str(p.relative_to(mnt)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(Path(mnt).glob("d*/f"))
            }
        finally:
            subprocess.run(["umount", mnt], check=True)


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_a_smaller_disk_gets_the_ext4_shrunk_and_every_file_reads_back(tmp_path, label):
    image = tmp_path / "img.raw"
    digests = ext4_image(image, label, 64)
    disk = old_disk(tmp_path / "disk.img", 160 * MiB)
    with loop_device(disk) as dev:
        run = ferry(
            "--image", str(image), "--target", dev, "--confirm", Path(dev).name,
            "--no-fixups", "--shrink",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        part = partition(dev)
        start, size = part["start"] * 512, part["size"] * 512
        fsck = subprocess.run(
            ["sfdisk", "--verify", dev], capture_output=True, text=True
        )
        with part_device(dev, start, size) as node:
            e2fsck = subprocess.run(["e2fsck", "-fn", node], capture_output=True)
        found = files_of(dev, start, size)
    # The plan came before anything was written, naming the sizes.
    plan = run.stderr.index("shrink plan for")
    assert plan < run.stderr.index("== write"), run.stderr
    assert "partition 1 (ext4" in run.stderr
    assert start + size <= 160 * MiB - (33 * 512 if label == "gpt" else 0)
    assert size < IMAGE_SIZE - MiB
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert e2fsck.returncode == 0, e2fsck.stdout
    assert found == digests


def test_a_smaller_disk_without_shrink_is_refused_naming_the_option(tmp_path):
    image = tmp_path / "img.raw"
    ext4_image(image, "gpt", 8)
    disk = old_disk(tmp_path / "disk.img", 160 * MiB)
    before = sha256(disk)
    with loop_device(disk) as dev:
        run = ferry("--image", str(image), "--target", dev, "--confirm", Path(dev).name)
    assert run.returncode == 1
    assert "is too small" in run.stderr and "--shrink" in run.stderr, run.stderr
    assert sha256(disk) == before


def test_used_data_that_does_not_fit_is_refused_with_nothing_written(tmp_path):
    image = tmp_path / "img.raw"
    ext4_image(image, "gpt", 144)
    disk = old_disk(tmp_path / "disk.img", 160 * MiB)
    before = sha256(disk)
    with loop_device(disk) as dev:
        run = ferry(
            "--image", str(image), "--target", dev, "--confirm", Path(dev).name,
            "--shrink",
        )  # fmt: skip
    assert run.returncode == 1
    assert "the used data does not fit" in run.stderr, run.stderr
    assert "nothing was written" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert sha256(disk) == before


def test_xfs_cannot_shrink_and_is_refused_with_the_reason(tmp_path):
    image = tmp_path / "img.raw"
    size = 512 * MiB  # mkfs.xfs wants 300 MB at least
    subprocess.run(["truncate", "-s", str(size), str(image)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(image)], input="label: gpt\n2048,,L\n", text=True,
        check=True,
    )  # fmt: skip
    part = partition(image)
    with part_device(str(image), MiB, part["size"] * 512, writable=True) as dev:
        subprocess.run(["mkfs.xfs", "-q", "-f", dev], check=True)
    disk = old_disk(tmp_path / "disk.img", 400 * MiB)
    before = sha256(disk)
    with loop_device(disk) as dev:
        run = ferry(
            "--image", str(image), "--target", dev, "--confirm", Path(dev).name,
            "--shrink",
        )  # fmt: skip
    assert run.returncode == 1
    assert "xfs, which cannot be shrunk" in run.stderr, run.stderr
    assert "nothing was written" in run.stderr
    assert sha256(disk) == before
