"""phys-uefi-lvm (UEFI, GPT, root on LVM) converted by `ferry convert`
boots on virtio UEFI hardware with its hostname, its interface name (pinned
to the physical MAC the VM keeps) and its network configuration.

It is captured by ferry's own transfer (a loop device of the machine's
disk, mapped and sent) into a real `ferry serve --no-convert` and converted
by hand with `ferry convert SESSION`, once per module; the boot uses its own
overlay so it does not change the converted disk.

The negative controls: the unconverted capture does not boot on virtio
(test_convert_safety.py); a converted machine given another MAC, so no pin
applies, comes up with the virtual slot's name (ens3) and no address
(test_live_p2v_boots.py, on phys-bios: that module's live capture is also
where phys-bios's conversion by `ferry serve` is proved, so the machine is
captured and converted once for both).
"""

from __future__ import annotations

import pytest

from tests.e2e.convert_helpers import (
    BOOT_TIMEOUT,
    assert_same_machine,
    boot,
    captured_unconverted,
    log_tail,
    run_convert_cli,
)
from tests.harness.profiles import PROFILES

# A conversion is 10-15 min of emulated CPU on a loaded 2-core host (35-40
# min at load 20), and a module's first test also pays for its fixture's
# conversion and a boot.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]


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
