"""`ferry import` reads every foreign format into qcow2 with the same
bytes, reads the OVF, and refuses corrupt or truncated inputs before
writing anything."""

from __future__ import annotations

import argparse
import subprocess
import tarfile
from pathlib import Path

import pytest

from converters import import_command, ovf
from converters.cli import FerryError
from converters.events import EventStream
from tests.e2e.import_helpers import EXPORTS, export, make_ova


@pytest.fixture
def raw_disk(tmp_path) -> Path:
    disk = tmp_path / "src.raw"
    with open(disk, "wb") as f:
        f.write(b"\x11" * (1 << 20) + bytes(3 << 20) + b"\x22" * (1 << 20))
        f.truncate(8 << 20)
    return disk


def same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)]).returncode == 0


@pytest.mark.parametrize("kind", sorted(EXPORTS))
def test_each_format_imports_with_the_same_bytes(raw_disk, tmp_path, kind):
    image = export(raw_disk, kind, tmp_path / f"vm.{kind}")
    source = import_command.import_images(
        [image], tmp_path / "store", "", EventStream()
    )
    assert source.disks == (tmp_path / "store/vm/sda.qcow2",)
    assert same_content(raw_disk, source.disks[0])
    assert source.inventory.disks[0].size >= 8 << 20


def test_ova_gives_cpus_memory_firmware_and_disk(raw_disk, tmp_path):
    ova = make_ova(raw_disk, tmp_path / "ova", "web-01", firmware="uefi")
    found = ovf.open_ova(ova).machine
    assert (found.name, found.cpus, found.memory) == ("web-01", 2, 1536 << 20)
    assert found.firmware == "uefi"
    assert found.macs == ("00:50:56:aa:bb:cc",)
    assert [d.file for d in found.disks] == ["web-01-disk1.vmdk"]
    source = import_command.import_images([ova], tmp_path / "store", "", EventStream())
    assert source.name == "web-01" and source.inventory.cpus == 2
    assert same_content(raw_disk, source.disks[0])
    assert sorted(p.name for p in source.directory.iterdir()) == [
        "inventory.json",
        "sda.qcow2",
    ]


def test_truncated_vmdk_is_refused_before_writing(raw_disk, tmp_path):
    image = export(raw_disk, "vmdk", tmp_path / "vm.vmdk")
    with open(image, "r+b") as f:
        f.truncate(image.stat().st_size // 2)
    with pytest.raises(FerryError, match="vm.vmdk"):
        import_command.import_images([image], tmp_path / "store", "", EventStream())
    assert not (tmp_path / "store/vm").exists()


def test_corrupt_vhdx_header_is_refused(raw_disk, tmp_path):
    image = export(raw_disk, "vhdx", tmp_path / "vm.vhdx")
    with open(image, "r+b") as f:
        f.seek(64 << 10)  # the first header
        f.write(b"\xff" * 4096)
        f.seek(128 << 10)  # and its copy
        f.write(b"\xff" * 4096)
    with pytest.raises(FerryError, match="vm.vhdx"):
        import_command.import_images([image], tmp_path / "store", "", EventStream())
    assert not (tmp_path / "store/vm").exists()


def test_ova_whose_disk_fails_its_digest_is_refused(raw_disk, tmp_path):
    ova = make_ova(raw_disk, tmp_path / "ova", "web-01")
    data = bytearray(ova.read_bytes())
    data[-(8 << 10)] ^= 0xFF  # inside the last member, the disk
    ova.write_bytes(bytes(data))
    with pytest.raises(ovf.OvfError, match="does not match its manifest"):
        ovf.open_ova(ova)


def test_truncated_ova_is_refused(raw_disk, tmp_path):
    ova = make_ova(raw_disk, tmp_path / "ova", "web-01")
    with open(ova, "r+b") as f:
        f.truncate(ova.stat().st_size - (16 << 10))
    with pytest.raises(FerryError, match="web-01.ova"):
        import_command.import_images([ova], tmp_path / "store", "", EventStream())
    assert not (tmp_path / "store").exists()


def test_not_an_image_is_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(FerryError, match="raw image size"):
        import_command.probe(junk)
    with pytest.raises(FerryError, match="no such file"):
        import_command.probe(tmp_path / "missing.vmdk")


def test_ova_without_descriptor_is_refused(tmp_path):
    ova = tmp_path / "x.ova"
    with tarfile.open(ova, "w") as tar:
        (tmp_path / "readme").write_text("x")
        tar.add(tmp_path / "readme", arcname="readme")
    with pytest.raises(ovf.OvfError, match="no .ovf"):
        ovf.open_ova(ova)


def test_import_command_parses_its_options():
    parser = argparse.ArgumentParser()
    import_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", "a.ova", "--name", "web", "--storage", "/srv"])
    assert args.sources == [Path("a.ova")] and args.name == "web"
    assert args.storage == Path("/srv") and args.func is import_command.main


def test_unpacked_ovf_with_its_disk_beside_it(raw_disk, tmp_path):
    ova = make_ova(raw_disk, tmp_path / "ova", "web-01")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(ova) as tar:
        tar.extractall(unpacked)
    source = import_command.import_images(
        [unpacked / "web-01.ovf"], tmp_path / "store", "", EventStream()
    )
    assert source.name == "web-01" and source.inventory.memory == 1536 << 20
    assert same_content(raw_disk, source.disks[0])
    with open(unpacked / "web-01-disk1.vmdk", "r+b") as f:
        f.seek(-4096, 2)
        f.write(b"\xff" * 16)
    with pytest.raises(FerryError, match="does not match its manifest"):
        import_command.import_images(
            [unpacked / "web-01.ovf"], tmp_path / "store2", "", EventStream()
        )
