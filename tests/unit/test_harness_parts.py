"""The harness's own small parts: markers, profiles, mirrors."""

import pytest

from image import mirrors
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import BootMarker


def test_boot_marker_fields_parse_from_the_console_line():
    line = "host=phys-bios firmware=bios root=/dev/sda1 nic=ens8 mac=52:54:00:fe:01:01"
    marker = BootMarker.parse(line, 12.5)
    assert marker["host"] == "phys-bios"
    assert marker["mac"] == "52:54:00:fe:01:01"
    assert marker.seconds == 12.5


def test_physical_and_virtual_profiles_name_the_nic_differently():
    names = {p.name: p.nic_name for p in PROFILES.values()}
    assert names["physical-bios"] != names["virtual"]
    assert names["physical-uefi"] != names["virtual"]
    assert PROFILES["virtual"].with_firmware("uefi").machine == "q35"


def test_physical_profiles_put_the_disk_on_ahci_and_virtual_on_virtio(tmp_path):
    disk = tmp_path / "d.qcow2"
    phys = " ".join(PROFILES["physical-bios"].disk_args(0, disk, "qcow2", 1))
    virt = " ".join(PROFILES["virtual"].disk_args(0, disk, "qcow2", 1))
    assert "ide-hd" in phys and "bus=ahci.0" in phys
    assert "virtio-blk-pci" in virt


def test_uefi_profile_gets_its_own_nvram_copy(tmp_path):
    args = PROFILES["physical-uefi"].firmware_args(tmp_path)
    assert (tmp_path / "OVMF_VARS.fd").exists()
    assert any(str(tmp_path / "OVMF_VARS.fd") in a for a in args)


def test_mirror_comes_from_deb822_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("FERRY_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("FERRY_DEBIAN_SECURITY_MIRROR", raising=False)
    d = tmp_path / "apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    found = mirrors.find("bookworm", etc=str(tmp_path))
    assert found.archive == "http://mirror.example/debian"
    assert found.security == "http://mirror.example/debian-security"


def test_mirror_comes_from_one_line_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("FERRY_DEBIAN_MIRROR", raising=False)
    (tmp_path / "apt").mkdir()
    (tmp_path / "apt/sources.list").write_text(
        "deb [arch=amd64] http://m.example/debian bookworm main\n"
        "deb http://m.example/security bookworm-security main\n"
    )
    assert mirrors.find("bookworm", etc=str(tmp_path)).archive == (
        "http://m.example/debian"
    )


def test_no_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FERRY_DEBIAN_MIRROR", raising=False)
    with pytest.raises(mirrors.MirrorError, match="FERRY_DEBIAN_MIRROR"):
        mirrors.find("bookworm", etc=str(tmp_path))
