"""phys-uefi-lvm (UEFI, GPT, root on LVM) converted by `ferry convert`
boots on virtio UEFI hardware with its hostname, its interface name (pinned
to the physical MAC the VM keeps) and its network configuration.

It is captured by ferry's own transfer (a loop device of the machine's
disk, mapped and sent) into a real `ferry serve --no-convert` and converted
by hand with `ferry convert --check-boot SESSION`, once per module: ferry's
boot check must report that the converted VM reaches userspace, in its
output, convert.log and boot-check.json. The harness boot that follows uses
its own overlay so it does not change the converted disk.

The negative controls: the unconverted capture does not boot on virtio,
and ferry's boot check says so (test_convert_safety.py); a converted
machine given another MAC, so no pin applies, comes up with the virtual
slot's name (ens3) and no address (test_live_p2v_boots.py, on phys-bios:
that module's live capture is also where phys-bios's conversion by `ferry
serve` is proved, so the machine is captured and converted once for both).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import time

import pytest

from converters import accel, boot_check
from converters.errors import FerryError
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
    output = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(output):
        try:
            run_convert_cli(session, "--check-boot")
        except FerryError as e:
            # a failed check still leaves the disks converted: the tests
            # below say what the check and a boot of its own each found
            print(f"ferry convert: {e}", file=output)
    print(output.getvalue())
    assert (session / "conversion.json").exists(), log_tail(session)
    took = time.monotonic() - started
    print(f"phys-uefi-lvm converted and boot-checked in {took:.0f} s")
    yield machine, session, output.getvalue()
    for disk in session.glob("*.qcow2"):
        disk.unlink()


def test_ferry_boot_check_reports_the_converted_machine_reaches_userspace(
    uefi_converted, workdir
):
    _, session, output = uefi_converted
    # kept in test-logs/ when this fails
    shutil.copy(session / boot_check.LOG_FILE, workdir / "boot-check.log")
    result = json.loads((session / boot_check.RESULT_FILE).read_text())
    print(f"boot check: {result['summary']}")
    assert (result["result"], result["stage"]) == ("boots", "userspace"), result
    assert result["accelerator"] == accel.detect().name
    assert 0 < result["seconds"] < result["timeout"], result
    # the line of ferry convert's output: result, time, accelerator
    said = rf"boot check: boots, userspace after \d+ s \({result['accelerator']}\)"
    assert re.search(said, output), output
    assert (
        "boot check: boots, userspace after " in (session / "convert.log").read_text()
    )
    # the console shows it: ferry's marker from the real root, on a UEFI boot
    console = (session / boot_check.LOG_FILE).read_text(errors="replace")
    assert "FERRY-BOOT-CHECK userspace" in console
    assert "BdsDxe: starting" in console
    # throwaway: nothing of the check is left, the vars are the domain's own
    assert not list(session.glob(".boot-check-*"))


def test_phys_uefi_lvm_converted_boots_on_virtio_uefi_as_itself(
    uefi_converted, workdir
):
    machine, session, _ = uefi_converted
    profile = PROFILES["virtual"].with_firmware("uefi")
    with boot(session, profile, workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert_same_machine(marker, machine, vm, profile, session)
    assert marker["root"] == "/dev/mapper/ferry-root"
    # the boot check changed only its throwaway overlay, not the VM's disk
    assert "FERRY-BOOT-CHECK" not in vm.console()
    xml = (session / "phys-uefi-lvm.xml").read_text()
    assert "OVMF_CODE" in xml and (session / "phys-uefi-lvm_VARS.fd").exists()
    print(
        f"converted phys-uefi-lvm on virtual UEFI: marker after {marker.seconds:.0f} s"
    )
