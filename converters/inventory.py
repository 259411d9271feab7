"""What the live side owns: its disks, NICs, firmware, CPUs and memory, read
from udev (pyudev) and sysfs. The inventory travels to the KVM side with a
capture, which sizes the VM and keeps the NICs' MACs from it, and the TUI
shows it to the technician.

udev's database may be empty (no udevd, as in containers and early boot), so
filesystem facts fall back to `blkid -p`, which reads the device itself.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

SYS = Path("/sys")


@dataclass(frozen=True)
class Partition:
    name: str
    number: int
    start: int  # bytes
    size: int
    fstype: str = ""
    label: str = ""
    uuid: str = ""


@dataclass(frozen=True)
class Disk:
    name: str  # kernel name, e.g. "sda"
    path: str  # /dev/sda
    size: int
    model: str = ""
    serial: str = ""
    transport: str = ""  # sata, sas, nvme, usb, virtio, loop, ...
    removable: bool = False
    read_only: bool = False
    partitions: tuple[Partition, ...] = ()
    mounted: tuple[str, ...] = ()  # mount points on it or its partitions
    holders: tuple[str, ...] = ()  # dm/md devices built on it (LVM, RAID)
    boot_medium: bool = False  # the medium ferry itself booted from

    @property
    def busy(self) -> bool:
        return bool(self.mounted or self.holders)


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    link: bool
    driver: str = ""
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Machine:
    firmware: str  # "uefi" or "bios"
    cpus: int
    memory: int  # bytes
    cpu_model: str = ""
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    hostname: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Machine:
        disks = tuple(
            Disk(
                **{
                    **d,
                    "partitions": tuple(Partition(**p) for p in d["partitions"]),
                    "mounted": tuple(d["mounted"]),
                    "holders": tuple(d["holders"]),
                }
            )
            for d in data.get("disks", ())
        )
        nics = tuple(
            Nic(**{**n, "addresses": tuple(n["addresses"])})
            for n in data.get("nics", ())
        )
        rest = {k: v for k, v in data.items() if k not in ("disks", "nics")}
        return cls(**rest, disks=disks, nics=nics)

    def disk(self, name: str) -> Disk:
        for d in self.disks:
            if d.name == name or d.path == name:
                return d
        raise KeyError(name)


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _mounts() -> dict[str, list[str]]:
    """Mounted sources (as /dev paths and as major:minor) -> mount points."""
    found: dict[str, list[str]] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        parts = line.split()
        sep = parts.index("-")
        devno, point, source = parts[2], parts[4], parts[sep + 2]
        found.setdefault(devno, []).append(point)
        found.setdefault(source, []).append(point)
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        found.setdefault(line.split()[0], []).append("[swap]")
    return found


def _blkid(path: str) -> dict[str, str]:
    try:
        out = subprocess.run(
            ["blkid", "-p", "-o", "export", path],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(ln.split("=", 1) for ln in out.stdout.splitlines() if "=" in ln)


def _transport(name: str, props: dict[str, str]) -> str:
    if name.startswith("loop"):
        return "loop"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("vd"):
        return "virtio"
    path = props.get("ID_PATH", "")
    for key, transport in (
        ("usb", "usb"),
        ("sas", "sas"),
        ("ata", "sata"),
        ("virtio", "virtio"),
        ("nvme", "nvme"),
    ):
        if key in path:
            return transport
    return props.get("ID_BUS", "")


def _boot_medium() -> str | None:
    """The live environment records the device it booted from."""
    marker = Path("/run/ferry/boot-device")
    return _read(marker) or None


def _partitions(name: str, mounts: dict[str, list[str]]) -> tuple[list, list]:
    parts, mounted = [], []
    block = SYS / "class/block" / name
    for child in sorted(block.glob(f"{name}*")):
        if not (child / "partition").exists():
            continue
        devno = _read(child / "dev")
        dev = f"/dev/{child.name}"
        mounted += mounts.get(devno, []) + mounts.get(dev, [])
        fs = _blkid(dev)
        parts.append(
            Partition(
                child.name,
                int(_read(child / "partition", "0")),
                int(_read(child / "start", "0")) * 512,
                int(_read(child / "size", "0")) * 512,
                fs.get("TYPE", ""),
                fs.get("LABEL", ""),
                fs.get("UUID", ""),
            )
        )
    return parts, mounted


def disk(name: str, udev_props: dict[str, str] | None = None) -> Disk:
    """One disk by kernel name, from sysfs and, when given, udev properties."""
    props = udev_props or {}
    block = SYS / "class/block" / name
    mounts = _mounts()
    parts, mounted = _partitions(name, mounts)
    devno = _read(block / "dev")
    mounted += mounts.get(devno, []) + mounts.get(f"/dev/{name}", [])
    holders = [h.name for h in (block / "holders").glob("*")]
    for p in parts:
        holders += [h.name for h in (block / p.name / "holders").glob("*")]
    model = props.get("ID_MODEL", "").replace("_", " ") or _read(block / "device/model")
    serial = props.get("ID_SERIAL_SHORT", "") or _read(block / "device/serial")
    if name.startswith("loop"):
        model = model or os.path.basename(_read(block / "loop/backing_file"))
    return Disk(
        name=name,
        path=f"/dev/{name}",
        size=int(_read(block / "size", "0")) * 512,
        model=model,
        serial=serial,
        transport=_transport(name, props),
        removable=_read(block / "removable") == "1",
        read_only=_read(block / "ro") == "1",
        partitions=tuple(parts),
        mounted=tuple(sorted(set(mounted))),
        holders=tuple(sorted(set(holders))),
        boot_medium=_boot_medium() == f"/dev/{name}",
    )


def disks(include_loop: bool = False) -> list[Disk]:
    """Whole disks worth offering: no partitions, ram disks, CD drives or
    device-mapper nodes; loop devices only when asked (tests, image files)."""
    import pyudev

    found = []
    for dev in pyudev.Context().list_devices(subsystem="block", DEVTYPE="disk"):
        name = dev.sys_name
        if name.startswith(("ram", "sr", "dm-", "md", "zram")):
            continue
        if name.startswith("loop") and (
            not include_loop
            or not _read(SYS / "class/block" / name / "loop/backing_file")
        ):
            continue
        if _read(SYS / "class/block" / name / "size", "0") == "0":
            continue
        found.append(disk(name, dict(dev.properties)))
    return found


def nics() -> list[Nic]:
    found = []
    for dev in sorted((SYS / "class/net").glob("*")):
        if dev.name == "lo" or not (dev / "device").exists():
            continue  # virtual interfaces (bridges, veth) are not hardware
        driver = os.path.basename(os.path.realpath(dev / "device/driver"))
        found.append(
            Nic(
                dev.name,
                _read(dev / "address"),
                _read(dev / "carrier", "0") == "1",
                driver,
                tuple(_addresses(dev.name)),
            )
        )
    return found


def _addresses(name: str) -> list[str]:
    try:
        out = subprocess.run(
            ["ip", "-o", "addr", "show", "dev", name],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.split()[3] for ln in out.stdout.splitlines() if len(ln.split()) > 3]


def _memory() -> int:
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    for line in _read(Path("/proc/cpuinfo")).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


# Present in ferry's live environment (image/elements), whose host name
# is its own, not the machine's.
LIVE_MARKER = Path("/etc/ferry-live")


def machine_hostname(live_marker: Path = LIVE_MARKER) -> str:
    """This machine's host name, or "" when the live environment runs on
    it: then the KVM side names the VM after the session, not "ferry-live"
    for every machine of a rack."""
    return "" if live_marker.exists() else os.uname().nodename


def machine(include_loop: bool = False) -> Machine:
    return Machine(
        firmware="uefi" if Path("/sys/firmware/efi").exists() else "bios",
        cpus=os.cpu_count() or 1,
        memory=_memory(),
        cpu_model=_cpu_model(),
        disks=tuple(disks(include_loop)),
        nics=tuple(nics()),
        hostname=machine_hostname(),
    )
