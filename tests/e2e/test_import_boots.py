"""`ferry import` of the vm-virtio machine as other hypervisors export it:
an OVA (OVF + stream-optimised VMDK + manifest: the VMDK boot) and a VHDX. Each is
imported into qcow2, converted, and booted by the QEMU script the import
wrote (q35, virtio, the domain's MAC), as a host without libvirt would
start it. On q35 that NIC is enp0s2 by slot; the marker shows ens3, the
name the guest's own configuration uses, pinned to the new MAC, with that
configuration's address.

(Plain VMDK, VHD and VDI go through the same code and are checked for
identical bytes in tests/unit/test_import_inputs.py; booting each would add
a conversion and a boot per format for no new path.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import time

import pytest

from converters import import_command
from tests.e2e.convert_helpers import BOOT_TIMEOUT
from tests.e2e.import_helpers import export, make_ova, vmdk_create_type
from tests.harness.qemu_runner import MARKER, BootMarker, overlay

# A conversion is 10-15 min of emulated CPU on a loaded 2-core host, and a
# module's first test also pays for its fixture's conversion.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def run_import(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ferry")
    import_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", *argv])
    return args.func(args)


class ScriptVM:
    """NAME.qemu.sh run as written, its disk swapped for an overlay so the
    boot does not change the imported disk; the console goes to a file."""

    def __init__(self, folder, name, workdir) -> None:
        disk = folder / "sda.qcow2"
        boot_disk = overlay(disk, workdir / "boot.qcow2")
        text = (folder / f"{name}.qemu.sh").read_text()
        assert f"file={disk}," in text
        self.script = workdir / "boot.sh"
        self.script.write_text(text.replace(f"file={disk},", f"file={boot_disk},"))
        self.script.chmod(0o755)
        self.mac = re.search(r"mac=([0-9a-f:]+)", text).group(1)
        self.log = workdir / "console-script.log"
        self.proc = None

    def __enter__(self):
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(self.script)], stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        return self

    def wait_marker(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = MARKER.search(self.log.read_text(errors="replace"))
            if found:
                return BootMarker.parse(found.group(1), 0.0)
            time.sleep(1)
        return None

    def console(self) -> str:
        return self.log.read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # the script exec'd QEMU
            self.proc.wait(30)


@pytest.mark.parametrize("kind", ["ova", "vhdx"])
def test_exported_vm_imports_and_boots(machine_builder, workdir, kind):
    machine = machine_builder("vm-virtio")
    exports = workdir / "exports"
    exports.mkdir()
    if kind == "ova":
        source = make_ova(machine.disk, exports, "web-01")
        # the disk that boots is a VMDK as VMware exports it
        assert vmdk_create_type(source) == "streamOptimized"
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
    started = time.monotonic()
    with ScriptVM(folder, "web-01", workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    assert marker["host"] == machine.hostname
    assert marker["nic"] == "ens3" and marker["mac"] == vm.mac
    assert marker["addr"].startswith("10.0.2.")
    assert marker["data"] == "ok"
    print(f"{kind} import booted: marker after {time.monotonic() - started:.0f} s")
