"""Shared steps of the conversion tests: capture a test machine into a
real `ferry serve` by ferry's transfer, run `ferry convert` through its CLI
module, boot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from converters import convert_command
from converters.disk_map import map_disk
from converters.inventory import Disk, Machine, Nic
from converters.wire.client import DiskSource, upload
from tests.harness.qemu_runner import DEFAULT_MAC, QemuMachine, overlay
from tests.integration.test_capture import loop_device
from tests.integration.test_wire_support import Serve

# TCG boots these machines in 40-130 s on an idle 2-core host; a converted
# phys-uefi-lvm took 343 s at load average 10 (RCU stall warnings and all),
# and a converted phys-bios had not reached its marker after 600 s at load
# 20. Only a boot that fails waits this long.
BOOT_TIMEOUT = 1200


def machine_inventory(machine) -> Machine:
    """What the live side reports when booted on the test machine: its
    SATA disk, its NIC's name and MAC, its firmware and hostname."""
    size = machine.disk.stat().st_size
    return Machine(
        firmware=machine.recipe.firmware,
        cpus=1,
        memory=1 << 30,
        disks=(Disk("sda", "/dev/sda", size, model="ST1000", serial="FERRY0001"),),
        nics=(Nic(machine.recipe.nic, DEFAULT_MAC, True, "e1000"),),
        hostname=machine.hostname,
    )


def capture_into_serve(machine, server: Serve, session: str) -> Path:
    """ferry's own transfer of the machine's disk into a running `ferry
    serve`: the disk as a read-only block device (a loop device), mapped
    (partitions, used blocks) and sent over TLS, with the inventory the
    machine's live side would send (this host is not that machine, so its
    own inventory would describe the wrong NICs and firmware)."""
    with loop_device(machine.disk) as dev:
        source = DiskSource("sda", dev, map_disk(dev))
        inventory = machine_inventory(machine).to_json()
        upload(server.pairing, session, [source], inventory=inventory)
    return server.storage / session


def captured_unconverted(machine, folder: Path, session: str) -> Path:
    """The machine captured by ferry's transfer into a `ferry serve
    --no-convert` that is stopped again: the session as a capture leaves it,
    for a conversion by hand (or none)."""
    server = Serve(folder / "storage", folder / "serve.log", convert=False)
    server.start()
    try:
        return capture_into_serve(machine, server, session)
    finally:
        server.stop()
        server.end_orphans()


def run_convert_cli(session: Path, *extra: str) -> tuple[int, float]:
    """`ferry convert SESSION` through the command module's own parser."""
    parser = argparse.ArgumentParser(prog="ferry")
    convert_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(session), *extra])
    started = time.monotonic()
    code = args.func(args)
    return code, time.monotonic() - started


def log_tail(session: Path, lines: int = 40) -> str:
    log = session / "convert.log"
    if not log.exists():
        return "(no convert.log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def boot(session: Path, profile, workdir: Path, mac: str = DEFAULT_MAC) -> QemuMachine:
    """The converted disk behind a fresh overlay: boots never change it."""
    disk = overlay(session / "sda.qcow2", workdir / "boot.qcow2")
    return QemuMachine(profile, workdir, [disk], mac=mac)


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
