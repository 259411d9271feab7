"""The harness proves its own hardware profiles: each test machine boots on
the hardware it was installed for and does not boot on the other kind, so
later conversion tests that boot a machine prove their fixups were needed."""

from __future__ import annotations

import pytest

from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import QemuMachine, overlay

pytestmark = pytest.mark.slow

# TCG boots these machines in about 40 s on an idle 2-core host; the margin
# covers a loaded CI machine.
BOOT_TIMEOUT = 480
# initramfs-tools waits about 30 s for a missing root device before it gives up.
NO_ROOT = r"does not exist|Gave up waiting for root"


def boot(machine, profile_name, workdir) -> QemuMachine:
    disk = overlay(machine.disk, workdir / "disk.qcow2")
    return QemuMachine(PROFILES[profile_name], workdir, [disk])


def assert_booted_as(marker, machine, profile, vm) -> None:
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    assert marker["host"] == machine.hostname
    assert marker["firmware"] == profile.firmware
    assert marker["nic"] == profile.nic_name
    assert marker["mac"] == vm.mac
    # The machine's own network configuration found its interface.
    assert marker["addr"].startswith("10.0.2."), marker.fields
    assert marker["data"] == "ok"


def test_phys_bios_boots_on_physical_bios_hardware(machine_builder, workdir):
    machine = machine_builder("phys-bios")
    profile = PROFILES["physical-bios"]
    with boot(machine, "physical-bios", workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert_booted_as(marker, machine, profile, vm)
    assert marker["root"] == "/dev/sda1"
    print(f"phys-bios on physical-bios: marker after {marker.seconds:.0f} s")


def test_phys_bios_does_not_boot_on_virtio_hardware(machine_builder, workdir):
    machine = machine_builder("phys-bios")
    with boot(machine, "virtual", workdir) as vm:
        found = vm.wait_for(NO_ROOT, BOOT_TIMEOUT)
        console = vm.console()
    assert found, f"initramfs did not report a missing root:\n{console[-3000:]}"
    assert "FERRY-BOOTED" not in console


def test_vm_virtio_boots_on_virtual_hardware(machine_builder, workdir):
    machine = machine_builder("vm-virtio")
    profile = PROFILES["virtual"]
    with boot(machine, "virtual", workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert_booted_as(marker, machine, profile, vm)
    assert marker["root"] == "/dev/vda1"
    print(f"vm-virtio on virtual: marker after {marker.seconds:.0f} s")


def test_vm_virtio_does_not_boot_on_physical_bios_hardware(machine_builder, workdir):
    machine = machine_builder("vm-virtio")
    with boot(machine, "physical-bios", workdir) as vm:
        found = vm.wait_for(NO_ROOT, BOOT_TIMEOUT)
        console = vm.console()
    assert found, f"initramfs did not report a missing root:\n{console[-3000:]}"
    assert "FERRY-BOOTED" not in console


def test_phys_uefi_lvm_boots_on_physical_uefi_hardware(machine_builder, workdir):
    machine = machine_builder("phys-uefi-lvm")
    profile = PROFILES["physical-uefi"]
    with boot(machine, "physical-uefi", workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert_booted_as(marker, machine, profile, vm)
    assert marker["root"] == "/dev/mapper/ferry-root"
    print(f"phys-uefi-lvm on physical-uefi: marker after {marker.seconds:.0f} s")
