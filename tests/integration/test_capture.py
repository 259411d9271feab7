"""`ferry capture` end to end over TLS on loopback: a used physical disk (the
phys-bios test machine, its free space full of deleted data) on a read-only
loop device, captured as a user runs it, into qcow2 on a real `ferry serve`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from converters.disk_map import map_disk
from converters.extents import ExtentKind
from tests.integration.test_wire_support import expected_image, qemu_img_compare

GiB = 1 << 30


@contextmanager
def loop_device(path: Path, read_only: bool = True):
    args = ["losetup", "-f", "--show"] + (["-r"] if read_only else []) + [str(path)]
    dev = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    dev = dev.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def ferry(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converters.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def partition_files(image: Path, offset: int, paths: list[str]) -> dict[str, str]:
    """sha256 of files inside the ext4 at `offset` of a raw image, read with
    debugfs (no mount needed)."""
    sums = {}
    for path in paths:
        out = subprocess.run(
            ["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"],
            capture_output=True,
            check=True,
        )
        sums[path] = hashlib.sha256(out.stdout).hexdigest()
    return sums


@pytest.mark.slow
def test_capture_of_a_used_disk_sends_only_live_data_and_restores_exactly(
    machine_builder, serve, pairing, tmp_path
):
    machine = machine_builder("phys-bios")
    with loop_device(machine.disk) as dev:
        name = Path(dev).name
        run = ferry(
            "capture",
            "--server",
            str(pairing),
            "--loop",
            "--disks",
            name,
            "--name",
            "cap",
        )
        assert run.returncode == 0, run.stdout + run.stderr
        emap = map_disk(dev)

    qcow2 = serve.storage / "cap" / f"{name}.qcow2"
    record = serve.session_record("cap")
    assert json.loads((serve.storage / "cap" / "inventory.json").read_text())["disks"]

    # Byte for byte what the guest can read back: SKIP areas read as zeros.
    expected = expected_image(machine.disk, emap, tmp_path / "expected.raw")
    compared = qemu_img_compare(expected, qcow2)
    assert compared.returncode == 0, compared.stdout + compared.stderr

    # The deleted data stayed home: the map skipped at least 1 GiB and the
    # image holds little more than the live data.
    assert emap.bytes_of(ExtentKind.SKIP) > 1 * GiB
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", qcow2],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["actual-size"] < emap.bytes_of(ExtentKind.DATA) + 64 << 20
    assert "sent as data" in run.stdout, run.stdout
    assert record  # the session exists and is described

    # The restored root filesystem is clean and its files are intact.
    restored = tmp_path / "restored.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", qcow2, restored], check=True
    )
    root_offset = 2048 * 512
    with loop_device(restored) as whole:
        part = subprocess.run(
            [
                "losetup",
                "-f",
                "--show",
                "-r",
                "--offset",
                str(root_offset),
                "--sizelimit",
                str(emap.size - root_offset - (256 << 20)),
                whole,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        try:
            fsck = subprocess.run(
                ["e2fsck", "-fn", part], capture_output=True, text=True
            )
        finally:
            subprocess.run(["losetup", "-d", part], check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    sums = partition_files(restored, root_offset, list(machine.manifest))
    assert sums == machine.manifest


def test_capture_refuses_a_disk_mounted_read_write_and_creates_nothing(
    serve, pairing, tmp_path
):
    image = tmp_path / "busy.raw"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(image, read_only=False) as dev:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            run = ferry(
                "capture",
                "--server",
                str(pairing),
                "--loop",
                "--disks",
                Path(dev).name,
                "--name",
                "busy",
            )
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "mounted read-write" in lines[0], run.stderr
    assert not (serve.storage / "busy").exists()


def test_capture_names_the_disks_there_are_when_asked_for_a_missing_one(serve, pairing):
    run = ferry("capture", "--server", str(pairing), "--disks", "nosuchdisk")
    assert run.returncode == 1
    assert "no disk 'nosuchdisk'" in run.stderr
    assert not [p for p in serve.storage.iterdir() if not p.name.startswith(".")]
