"""Cold P2V capture: the live side's disks, mapped to what the guest can ever
read back, streamed into a session on `ferry serve`.

The steps are the flow a technician sees: inventory, choose disks, refuse
the ones that are in use, map each disk, send. Everything reports through
the event stream; the wire client does the resuming.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from converters import inventory
from converters.disk_map import map_disk
from converters.events import EventStream
from converters.extents import ExtentKind, ExtentMap
from converters.inventory import Disk, Machine
from converters.wire.client import DiskSource, UploadOptions, UploadResult, upload


class CaptureError(Exception):
    """A capture that cannot start; the message is one line for the user."""


@dataclass
class CapturePlan:
    machine: Machine
    disks: list[Disk]
    session: str


@dataclass
class CaptureRequest:
    server: str  # pairing string
    disks: list[str] | None = None  # names or paths; None: every fixed disk
    name: str | None = None  # session (and VM) name; default the hostname
    options: UploadOptions = field(default_factory=UploadOptions)
    include_loop: bool = False  # offer loop devices (image files, tests)
    # The VM's size when the technician chose one (None: the machine's);
    # sent as the inventory's cpus/memory, which size the converted VM.
    vcpus: int | None = None
    memory: int | None = None  # bytes


def rw_mounts(disk: Disk) -> list[str]:
    """Mount points of `disk` (its partitions or the volumes built on it)
    that are writable: capturing those would copy a moving filesystem."""
    names = {disk.name, *(p.name for p in disk.partitions), *disk.holders}
    devnos = set()
    for name in names:
        try:
            devnos.add(Path(f"/sys/class/block/{name}/dev").read_text().strip())
        except OSError:
            pass
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        if parts[2] in devnos and "rw" in parts[5].split(","):
            found.append(parts[4])
    return found


def select_disks(machine: Machine, wanted: list[str] | None) -> list[Disk]:
    """The disks named (kernel name or path), or every fixed disk but the
    boot medium; one-line errors for a disk that is not there."""
    if not wanted or wanted == ["all"]:
        chosen = [d for d in machine.disks if not d.removable and not d.boot_medium]
        if not chosen:
            raise CaptureError("no fixed disks found to capture")
        return chosen
    chosen = []
    for name in wanted:
        try:
            chosen.append(machine.disk(name))
        except KeyError:
            known = ", ".join(d.name for d in machine.disks) or "none"
            raise CaptureError(f"no disk {name!r} (disks: {known})") from None
    return chosen


def plan(request: CaptureRequest) -> CapturePlan:
    """Inventory and the checks that must pass before a byte is sent."""
    machine = inventory.machine(include_loop=request.include_loop)
    disks = select_disks(machine, request.disks)
    for disk in disks:
        if disk.boot_medium:
            raise CaptureError(f"{disk.name} is the medium ferry booted from")
        busy = rw_mounts(disk)
        if busy:
            raise CaptureError(
                f"{disk.name} has a filesystem mounted read-write at "
                f"{', '.join(busy)}: unmount it (or remount read-only) first"
            )
    return CapturePlan(machine, disks, request.name or _default_name(machine))


def map_disks(disks: list[Disk], events: EventStream) -> list[DiskSource]:
    sources = []
    for disk in disks:
        events.step("map", f"{disk.name}: reading partitions and used blocks")
        started = time.monotonic()
        emap = map_disk(disk.path)
        events.log(_describe(disk, emap, time.monotonic() - started))
        sources.append(DiskSource(disk.name, disk.path, emap))
    return sources


def _describe(disk: Disk, emap: ExtentMap, seconds: float) -> str:
    gib = 1 << 30
    data = emap.bytes_of(ExtentKind.DATA) / gib
    skip = emap.bytes_of(ExtentKind.SKIP) / gib
    return (
        f"{disk.name}: {emap.size / gib:.1f} GiB disk, {data:.2f} GiB to send, "
        f"{skip:.2f} GiB unused and skipped (mapped in {seconds:.1f} s)"
    )


def capture(request: CaptureRequest, events: EventStream) -> UploadResult:
    """Capture the chosen disks into a session on the server; run again with
    the same name to resume after an interruption on either side."""
    events.step("inventory", "disks, NICs, firmware")
    chosen = plan(request)
    sources = map_disks(chosen.disks, events)
    events.step("send", f"session {chosen.session}")
    return upload(
        request.server,
        chosen.session,
        sources,
        inventory=_inventory(chosen.machine, request),
        options=request.options,
        events=events,
    )


def _inventory(machine: Machine, request: CaptureRequest) -> dict:
    inv = machine.to_json()
    if request.vcpus:
        inv["cpus"] = request.vcpus
    if request.memory:
        inv["memory"] = request.memory
    return inv


def _default_name(machine: Machine) -> str:
    # In the live environment the host name is unknown (""): the MAC of the
    # first NIC names the machine, as in unattended runs.
    from converters.unattended import default_name

    return machine.hostname or default_name()
