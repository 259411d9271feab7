"""`ferry import` of the vm-virtio machine as other hypervisors export it:
an OVA (OVF + stream-optimised VMDK + manifest) and a VHDX. Each is
imported into qcow2, converted and booted on the `virtual` profile with
the MAC its domain was given; the marker shows the machine, its pinned
interface name and its own network configuration at work.

(Plain VMDK, VHD and VDI go through the same code and are checked for
identical bytes in tests/unit/test_import_inputs.py; booting each would add
a conversion and a boot per format for no new path.)
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from converters import import_command
from tests.e2e.convert_helpers import BOOT_TIMEOUT
from tests.e2e.import_helpers import export, make_ova
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import QemuMachine, overlay

pytestmark = pytest.mark.slow


def run_import(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferry")
    import_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", *argv])
    return args.func(args)


def boot_imported(folder, name, workdir):
    xml = (folder / f"{name}.xml").read_text()
    macs = re.findall(r'<mac address="([0-9a-f:]+)"/>', xml)
    assert len(macs) == 1, xml
    disk = overlay(folder / "sda.qcow2", workdir / "boot.qcow2")
    return QemuMachine(PROFILES["virtual"], workdir, [disk], mac=macs[0])


@pytest.mark.parametrize("kind", ["ova", "vhdx"])
def test_exported_vm_imports_and_boots(machine_builder, workdir, kind):
    machine = machine_builder("vm-virtio")
    exports = workdir / "exports"
    exports.mkdir()
    if kind == "ova":
        source = make_ova(machine.disk, exports, "web-01")
    else:
        source = export(machine.disk, "vhdx", exports / "web-01.vhdx")
    storage = workdir / "storage"
    assert run_import(str(source), "--storage", str(storage)) == 0
    folder = storage / "web-01"
    result = json.loads((folder / "conversion.json").read_text())
    assert [n["name"] for n in result["nics"]] == ["ens3"]
    if kind == "ova":  # the OVF's sizes reached the domain
        xml = (folder / "web-01.xml").read_text()
        assert "<vcpu>2</vcpu>" in xml and '<memory unit="MiB">1536</memory>' in xml
    with boot_imported(folder, "web-01", workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    assert marker["host"] == machine.hostname
    assert marker["nic"] == "ens3" and marker["mac"] == vm.mac
    assert marker["addr"].startswith("10.0.2.")
    assert marker["data"] == "ok"
    print(f"{kind} import booted: marker after {marker.seconds:.0f} s")
