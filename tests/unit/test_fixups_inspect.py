"""Inspection reads what a conversion needs; unsupported guests are named
with everything they lack, before any change."""

from __future__ import annotations

import pytest

from converters.events import EventStream
from converters.fixups import inspect, pipeline
from converters.fixups.guest import Mount, UnsupportedGuest
from tests.unit.fake_guest import FEDORA, FakeGuest, debian_guest


def test_debian_bios_guest(tmp_path):
    info = inspect.inspect(debian_guest(tmp_path))
    assert (info.os_id, info.family, info.version) == ("debian", "debian", "12")
    assert info.hostname == "web1"
    assert [k.version for k in info.kernels] == ["6.1.0-9-amd64"]
    assert info.kernels[0].initramfs == "/boot/initrd.img-6.1.0-9-amd64"
    assert info.initramfs_tool == "initramfs-tools"
    assert info.grub.platforms == ("i386-pc",)
    assert info.firmware == "bios"
    assert info.root == "/dev/sda1" and info.esp == ""
    assert info.fstab[0].spec == "UUID=u1"
    assert inspect.missing(info) == []


def test_debian_uefi_guest(tmp_path):
    info = inspect.inspect(debian_guest(tmp_path, uefi=True))
    assert info.firmware == "uefi"
    assert info.esp == "/dev/sda2"
    assert info.efi_loaders == ("/boot/efi/EFI/debian/grubx64.efi",)


def test_other_family_is_refused_naming_what_is_missing(tmp_path):
    guest = FakeGuest(tmp_path, [], [Mount("/dev/sda1", "/")])
    guest.put("/etc/os-release", FEDORA)
    with pytest.raises(UnsupportedGuest) as err:
        pipeline.prepare(guest, pipeline.Request(), EventStream())
    text = str(err.value)
    assert "cannot convert Fedora Linux 39" in text
    assert "support for the rhel family" in text
    assert "an installed kernel" in text
    assert "an initramfs tool" in text
    assert "GRUB" in text
    assert guest.ran == []  # nothing was run, nothing written


def test_parse_os_release_handles_quotes():
    values = inspect.parse_os_release("ID=\"ubuntu\"\nID_LIKE=debian\nNAME='Ubuntu'\n")
    assert values == {"ID": "ubuntu", "ID_LIKE": "debian", "NAME": "Ubuntu"}
    assert inspect.family_of("ubuntu", "debian") == "debian"
    assert inspect.family_of("rocky", "rhel centos fedora") == "rhel"
