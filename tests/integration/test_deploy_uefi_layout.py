"""A BIOS (MBR) image for a UEFI machine: after the write, its table becomes
a GPT with every partition where it was, an EFI system partition with FAT32
ends the disk, and the image's fstab mounts it at /boot/efi; on a larger
target the root partition first grows up to where the ESP will start; a
target with no room for it is refused before the write. Real sgdisk, mkfs.vfat and loop
devices; the UEFI boot itself is tests/e2e/test_deploy_lab.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from converters import deploy_grow, deploy_uefi_layout
from converters.deploy_uefi_layout import ESP_SIZE, ESP_TYPE, ROOM, LayoutError
from converters.events import EventStream
from tests.integration.test_capture import loop_device
from tests.integration.test_deploy_write import ext4_size, partitioned_image

MiB = 1 << 20
IMAGE = 64 * MiB
FSTAB = "UUID=0a1b2c3d-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n"


def _table(path) -> dict:
    out = subprocess.run(
        ["sfdisk", "--json", str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)["partitiontable"]


def _debugfs(image: Path, offset: int, request: str, write: bool = False) -> str:
    argv = ["debugfs", *(["-w"] if write else []), "-R", request]
    out = subprocess.run(
        [*argv, f"{image}?offset={offset}"], check=True, capture_output=True, text=True
    )
    return out.stdout


def bios_image(tmp_path: Path) -> Path:
    """An MBR disk with one ext4 from 1 MiB to its end holding /etc/fstab,
    like the vm-virtio machine."""
    image = tmp_path / "bios.raw"
    partitioned_image(image, "dos", IMAGE)
    fstab = tmp_path / "fstab"
    fstab.write_text(FSTAB)
    _debugfs(image, MiB, "mkdir etc", write=True)
    _debugfs(image, MiB, f"write {fstab} etc/fstab", write=True)
    return image


def test_a_bios_image_needs_an_esp_and_a_target_without_room_is_refused(tmp_path):
    head = bios_image(tmp_path).read_bytes()[:MiB]
    assert deploy_uefi_layout.needs_esp(head, "sda", IMAGE, IMAGE + ROOM) is True
    with pytest.raises(LayoutError, match=r"needs 130 MiB .* only 100 MiB larger"):
        deploy_uefi_layout.needs_esp(head, "sda", IMAGE, IMAGE + 100 * MiB)
    esp = tmp_path / "esp.raw"
    subprocess.run(["truncate", "-s", str(IMAGE), str(esp)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(esp)], input="label: gpt\n2048,,U\n", text=True, check=True
    )
    head = esp.read_bytes()[:MiB]
    # an image with an ESP needs nothing, whatever the room
    assert deploy_uefi_layout.needs_esp(head, "sda", IMAGE, IMAGE) is False


def test_mbr_becomes_gpt_with_partitions_kept_and_an_esp_at_the_end(tmp_path):
    image = bios_image(tmp_path)
    before = _table(image)["partitions"][0]
    target = tmp_path / "target.raw"
    subprocess.run(["truncate", "-s", str(IMAGE + ROOM + 8 * MiB), str(target)])
    subprocess.run(
        ["dd", f"if={image}", f"of={target}", "conv=notrunc,sparse", "bs=1M"],
        check=True,
        capture_output=True,
    )
    with loop_device(target, read_only=False) as dev:
        report = deploy_uefi_layout.add_esp(dev, EventStream())
    table = _table(target)
    assert table["label"] == "gpt"
    root, esp = table["partitions"]
    assert (root["start"], root["size"]) == (before["start"], before["size"])
    assert esp["type"] == ESP_TYPE
    assert report.converted and report.partition == 2
    # sgdisk aligns the start down to a MiB
    assert ESP_SIZE <= int(esp["size"]) * 512 == report.size < ESP_SIZE + 2 * MiB
    # at the end: only the backup GPT (33 sectors) and alignment after it
    end = (int(esp["start"]) + int(esp["size"])) * 512
    assert target.stat().st_size - end < MiB
    probe = subprocess.run(
        ["blkid", "-p", "-O", str(report.start), "-o", "export", str(target)],
        capture_output=True,
        text=True,
    ).stdout
    assert "TYPE=vfat" in probe and f"UUID={report.uuid}" in probe
    # the root filesystem is intact, and mounts the ESP where grub wants it
    fsck = subprocess.run(
        ["e2fsck", "-fn", f"{target}?offset={MiB}"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    fstab = _debugfs(target, MiB, "cat etc/fstab")
    assert fstab.startswith(FSTAB)
    assert f"UUID={report.uuid} /boot/efi vfat" in fstab
    assert "boot" in _debugfs(target, MiB, "ls -l /")


def test_on_a_larger_disk_root_grows_up_to_the_esp_it_leaves_room_for(tmp_path):
    image = bios_image(tmp_path)
    target = tmp_path / "target.raw"
    size = IMAGE + ROOM + 96 * MiB
    subprocess.run(["truncate", "-s", str(size), str(target)], check=True)
    subprocess.run(
        ["dd", f"if={image}", f"of={target}", "conv=notrunc,sparse", "bs=1M"],
        check=True,
        capture_output=True,
    )
    events = EventStream()
    with loop_device(target, read_only=False) as dev:
        grown = deploy_grow.grow(dev, events, keep_free=ROOM)
        report = deploy_uefi_layout.add_esp(dev, events)
        fs_after = ext4_size(dev, MiB)
    root, esp = _table(target)["partitions"]
    root_end = (int(root["start"]) + int(root["size"])) * 512
    # root took the new space but the ESP's: it ends where the ESP begins,
    # give or take sgdisk's MiB alignment of the ESP's start
    assert grown and grown.new_size > grown.old_size + 90 * MiB
    assert report.start - 2 * MiB <= root_end <= report.start
    assert root_end - MiB - 4096 < fs_after <= root_end - MiB
    assert report.size >= ESP_SIZE and esp["type"] == ESP_TYPE
    fsck = subprocess.run(
        ["e2fsck", "-fn", f"{target}?offset={MiB}"], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert f"UUID={report.uuid} /boot/efi vfat" in _debugfs(
        target, MiB, "cat etc/fstab"
    )
