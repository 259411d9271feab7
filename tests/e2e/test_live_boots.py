"""The live environment boots everywhere a datacenter boots. The one hybrid
ISO carries BIOS and UEFI boot entries and a partition table for USB; it
comes up as a CD on OVMF and as a USB stick on SeaBIOS. (As a CD on SeaBIOS
and over PXE it boots in the golden-path tests, which go on to capture.)
Each boot waits for the FERRY-LIVE-READY line and checks what it says about
the machine: firmware, boot medium, the NIC's DHCP address, nothing
listening, root locked, `ferry doctor` clean for the live role."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.e2e.live_helpers import (
    MEMORY_MB,
    assert_ready_on,
    blank_disk,
    iso_with_unchecked_keys,
    ready_fields,
)
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import QemuMachine

pytestmark = [pytest.mark.slow, pytest.mark.image]

ISO_BUDGET = 350 << 20


def test_iso_has_bios_and_uefi_boot_and_a_partition_table_for_usb(live_image):
    iso = live_image.iso
    assert iso.stat().st_size <= ISO_BUDGET, f"{iso.stat().st_size >> 20} MiB"
    report = subprocess.run(
        ["xorriso", "-indev", iso, "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    platforms = re.findall(r"El Torito boot img :\s+\d+\s+(\S+)", report)
    assert sorted(platforms) == ["BIOS", "UEFI"], report
    system_area = subprocess.run(
        ["xorriso", "-indev", iso, "-report_system_area", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # An MBR with partitions (and the 0x55AA signature) lets firmware boot
    # the same bytes from a USB stick.
    assert "MBR partition table" in system_area or "GPT" in system_area, system_area
    with open(iso, "rb") as f:
        assert f.read(512)[510:] == b"\x55\xaa"
    sums = subprocess.run(
        ["sha256sum", "--check", "--quiet", live_image.sums.name],
        cwd=live_image.directory,
        capture_output=True,
        text=True,
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr


def test_iso_boots_as_a_cd_on_ovmf_and_refuses_bad_unattended_keys(live_image, workdir):
    # An unattended P2V with a typo and no token: the live side must say so
    # on the console and refuse to run, not guess.
    iso = iso_with_unchecked_keys(
        live_image,
        workdir / "bad-keys.iso",
        "ferry.mode=p2v ferry.server=10.0.2.2:9 ferry.dsks=sda",
    )
    with QemuMachine(
        PROFILES["physical-uefi"], workdir, cdrom=iso, memory_mb=MEMORY_MB
    ) as vm:
        fields = ready_fields(vm)
        refused = vm.wait_for(r"FERRY-UNATTENDED-FAILED mode=p2v .*", 120)
        console = vm.console()
    assert_ready_on(fields, "physical-uefi")
    assert fields["boot"] == "/dev/sr0"
    assert fields["mode"] == "p2v"
    assert fields["keys"] == "2-problems", fields
    assert "unknown key ferry.dsks (did you mean ferry.disks?)" in console
    assert "ferry.mode=p2v needs ferry.token=" in console
    assert refused, console[-3000:]
    print(f"CD on OVMF: ready {fields['wall']} (uptime {fields['uptime']})")


def test_iso_boots_as_a_usb_stick_on_seabios(live_image, workdir):
    with QemuMachine(
        PROFILES["physical-bios"],
        workdir,
        [blank_disk(workdir)],
        usb=live_image.iso,
        memory_mb=MEMORY_MB,
    ) as vm:
        fields = ready_fields(vm)
    assert_ready_on(fields, "physical-bios")
    assert fields["mode"] == "interactive" and fields["keys"] == "ok"
    disks = dict(d.split(":", 1) for d in fields["disks"].split(","))
    # The stick is recognised as the boot medium, the SATA disk is not, and
    # the SATA disk is offered.
    boot = fields["boot"].removeprefix("/dev/")
    assert boot in disks and disks[boot] != "2G", fields
    assert "2G" in disks.values(), fields
    print(f"USB on SeaBIOS: ready {fields['wall']} (uptime {fields['uptime']})")
