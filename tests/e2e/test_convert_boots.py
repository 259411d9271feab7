"""Captured physical machines converted by `ferry convert` boot on virtio
hardware with their hostname, their interface name (pinned to the physical
MAC the VM keeps) and their network configuration; each proof has its
negative control:

- the unconverted capture does not boot on virtio (test_convert_safety);
- the converted machine given another MAC, so no pin applies, comes up with
  the virtual slot's name (ens3) and its network configuration matches
  nothing (addr=none): the pin is what kept ens8.

Both are captured by ferry's own transfer (a loop device of the machine's
disk, mapped and sent) into a real `ferry serve`: phys-bios is converted by
the server when its capture completes, phys-uefi-lvm by `ferry convert
SESSION` by hand. Each is converted once per module; each boot uses its own
overlay so boots do not change the converted disk.
"""

from __future__ import annotations

import pytest

from converters.wire import autoconvert
from tests.e2e.convert_helpers import (
    BOOT_TIMEOUT,
    boot,
    capture_into_serve,
    captured_unconverted,
    log_tail,
    run_convert_cli,
)
from tests.harness.profiles import PROFILES
from tests.integration.test_wire_support import Serve

# A conversion is 10-15 min of emulated CPU on a loaded 2-core host (35-40
# min at load 20), and a module's first test also pays for its fixture's
# conversion and a boot.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

OTHER_MAC = "52:54:00:fe:01:99"
CONVERT_TIMEOUT = 4000


@pytest.fixture(scope="module")
def bios_converted(machine_builder, tmp_path_factory):
    """phys-bios captured by ferry's transfer into `ferry serve`, which
    converts it when the capture completes, as in the field."""
    machine = machine_builder("phys-bios")
    work = tmp_path_factory.mktemp("phys-bios")
    server = Serve(work / "storage", work / "serve.log", convert=True)
    server.start()
    try:
        session = capture_into_serve(machine, server, "phys-bios")
        status = autoconvert.wait(session, CONVERT_TIMEOUT)
    finally:
        server.stop()
        server.end_orphans()
    assert status and status.state == "converted", (status, log_tail(session))
    assert status.domain_xml == str(session / "phys-bios.xml")
    print(f"phys-bios converted by ferry serve in {status.seconds:.0f} s")
    yield machine, session
    for disk in session.glob("*.qcow2"):
        disk.unlink()


@pytest.fixture(scope="module")
def uefi_converted(machine_builder, tmp_path_factory):
    """phys-uefi-lvm (GPT: ESP, /boot, an LVM PV holding root and swap)
    captured by ferry's transfer into `ferry serve --no-convert`, its PV
    mapped through its LVs' filesystems (no device-mapper needed), then
    converted by hand with `ferry convert SESSION`."""
    machine = machine_builder("phys-uefi-lvm")
    work = tmp_path_factory.mktemp("phys-uefi-lvm")
    session = captured_unconverted(machine, work, "phys-uefi-lvm")
    code, took = run_convert_cli(session)
    assert code == 0, log_tail(session)
    print(f"phys-uefi-lvm converted in {took:.0f} s")
    yield machine, session
    for disk in session.glob("*.qcow2"):
        disk.unlink()


def assert_same_machine(marker, machine, vm, profile, session) -> None:
    assert marker, (
        f"no boot marker; console ends with:\n{vm.console()[-3000:]}\n"
        f"conversion log ends with:\n{log_tail(session)}"
    )
    assert marker["host"] == machine.hostname
    assert marker["firmware"] == profile.firmware
    # the physical name on the physical MAC, on hardware that names it otherwise
    assert marker["nic"] == machine.recipe.nic != profile.nic_name
    assert marker["mac"] == vm.mac
    assert marker["addr"].startswith("10.0.2."), marker.fields
    assert marker["data"] == "ok"


def test_phys_bios_converted_boots_on_virtio_as_itself(bios_converted, workdir):
    machine, session = bios_converted
    profile = PROFILES["virtual"]
    with boot(session, profile, workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert_same_machine(marker, machine, vm, profile, session)
    assert marker["root"] == "/dev/vda1"
    print(f"converted phys-bios on virtual: marker after {marker.seconds:.0f} s")


def test_without_a_pin_for_its_mac_the_nic_is_renamed(bios_converted, workdir):
    machine, session = bios_converted
    profile = PROFILES["virtual"]
    with boot(session, profile, workdir, mac=OTHER_MAC) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    assert marker["host"] == machine.hostname
    assert marker["nic"] == profile.nic_name == "ens3"
    assert marker["addr"] == "none"  # its configuration names ens8
    print(f"unpinned MAC on virtual: marker after {marker.seconds:.0f} s")


def test_domain_files_written_next_to_the_disks(bios_converted):
    _, session = bios_converted
    xml = (session / "phys-bios.xml").read_text()
    assert '<mac address="52:54:00:fe:01:01"/>' in xml
    assert f'<source file="{session / "sda.qcow2"}"/>' in xml
    assert "<loader" not in xml  # SeaBIOS, libvirt's default
    assert (session / "phys-bios.qemu.sh").stat().st_mode & 0o111
    assert "ens8 pinned to 52:54:00:fe:01:01" in (session / "convert.log").read_text()


def test_phys_uefi_lvm_converted_boots_on_virtio_uefi_as_itself(
    uefi_converted, workdir
):
    machine, session = uefi_converted
    profile = PROFILES["virtual"].with_firmware("uefi")
    with boot(session, profile, workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert_same_machine(marker, machine, vm, profile, session)
    assert marker["root"] == "/dev/mapper/ferry-root"
    xml = (session / "phys-uefi-lvm.xml").read_text()
    assert "OVMF_CODE" in xml and (session / "phys-uefi-lvm_VARS.fd").exists()
    print(
        f"converted phys-uefi-lvm on virtual UEFI: marker after {marker.seconds:.0f} s"
    )
