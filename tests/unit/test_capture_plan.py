import argparse
import os

import pytest

from converters import capture
from converters.capture_command import rate
from converters.inventory import Disk, Machine


def machine(*disks: Disk) -> Machine:
    return Machine(firmware="bios", cpus=2, memory=1 << 30, disks=disks)


FIXED = Disk("sda", "/dev/sda", 1 << 30)
STICK = Disk("sdb", "/dev/sdb", 1 << 30, transport="usb", removable=True)
BOOT = Disk("sdc", "/dev/sdc", 1 << 30, boot_medium=True)


def test_default_selection_is_every_fixed_disk_but_the_boot_medium():
    chosen = capture.select_disks(machine(FIXED, STICK, BOOT), None)
    assert [d.name for d in chosen] == ["sda"]


def test_disks_can_be_named_by_kernel_name_or_path():
    chosen = capture.select_disks(machine(FIXED, STICK), ["/dev/sdb", "sda"])
    assert [d.name for d in chosen] == ["sdb", "sda"]


def test_an_unknown_disk_is_refused_with_the_disks_there_are():
    with pytest.raises(capture.CaptureError, match=r"no disk 'sdz' \(disks: sda\)"):
        capture.select_disks(machine(FIXED), ["sdz"])


def test_a_machine_without_fixed_disks_has_nothing_to_capture():
    with pytest.raises(capture.CaptureError, match="no fixed disks"):
        capture.select_disks(machine(STICK), None)


def test_bandwidth_option_refuses_what_is_not_a_rate_in_one_line():
    assert rate("50M") == 50e6
    with pytest.raises(argparse.ArgumentTypeError, match="bad rate"):
        rate("fast")


def test_in_the_live_environment_the_machine_has_no_host_name_of_its_own(tmp_path):
    from converters.inventory import machine_hostname

    marker = tmp_path / "ferry-live"
    assert machine_hostname(marker) == os.uname().nodename
    marker.touch()
    # "ferry-live" would name every VM of a rack alike
    assert machine_hostname(marker) == ""
