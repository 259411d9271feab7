"""OVA/OVF: the machine description other hypervisors export (VMware,
VirtualBox). An OVA is a tar holding the .ovf (XML), a .mf manifest of
digests and the disks (usually stream-optimised VMDK). ferry reads the
CPUs, memory, firmware, NICs and disk order from the OVF and checks every
file against the manifest before anything is written, so a corrupt or
truncated OVA is refused up front.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# DMTF CIM resource types (CIM_ResourceAllocationSettingData)
RT_CPU, RT_MEMORY, RT_NIC, RT_DISK = "3", "4", "10", "17"
_UNITS = {"byte": 1, "kilobyte": 1 << 10, "megabyte": 1 << 20, "gigabyte": 1 << 30}


class OvfError(Exception):
    """The OVA/OVF is unreadable, corrupt, truncated or incomplete."""


@dataclass(frozen=True)
class OvfDisk:
    file: str  # file name inside the OVA / next to the OVF
    capacity: int  # bytes the guest sees


@dataclass(frozen=True)
class OvfMachine:
    name: str
    cpus: int
    memory: int  # bytes
    firmware: str  # "bios" or "uefi"
    disks: tuple[OvfDisk, ...]  # in the VM's disk order
    macs: tuple[str, ...] = ()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    for key, value in el.attrib.items():
        if _local(key) == name:
            return value
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el.iter() if _local(c.tag) == name]


def _text(el: ET.Element, name: str) -> str:
    found = next((c for c in el if _local(c.tag) == name), None)
    return (found.text or "").strip() if found is not None else ""


def _bytes(quantity: str, units: str, default_unit: int) -> int:
    """'2048' with 'byte * 2^20' or 'MegaBytes' -> bytes."""
    n = int(quantity or 0)
    units = units.replace(" ", "").lower()
    m = re.fullmatch(r"byte\*2\^(\d+)", units)
    if m:
        return n << int(m.group(1))
    for name, size in _UNITS.items():
        if units.startswith(name):
            return n * size
    return n * default_unit


def parse(text: str) -> OvfMachine:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise OvfError(f"the OVF is not valid XML: {e}") from None
    files = {_attr(f, "id"): _attr(f, "href") for f in _children(root, "File")}
    disks_by_id = {}
    for d in _children(root, "Disk"):
        unit = _attr(d, "capacityAllocationUnits") or "byte"
        size = _bytes(_attr(d, "capacity") or "0", unit, 1)
        disks_by_id[_attr(d, "diskId")] = OvfDisk(
            files.get(_attr(d, "fileRef"), ""), size
        )
    vs = next(iter(_children(root, "VirtualSystem")), None)
    if vs is None:
        raise OvfError("the OVF describes no VirtualSystem")
    name = _text(vs, "Name") or _attr(vs, "id") or "imported"
    cpus, memory, order, macs = 1, 0, [], []
    for item in _children(vs, "Item") + _children(vs, "StorageItem"):
        kind = _text(item, "ResourceType")
        if kind == RT_CPU:
            cpus = int(_text(item, "VirtualQuantity") or 1)
        elif kind == RT_MEMORY:
            memory = _bytes(
                _text(item, "VirtualQuantity"), _text(item, "AllocationUnits"), 1 << 20
            )
        elif kind == RT_DISK:
            ref = _text(item, "HostResource").rsplit("/", 1)[-1]
            if ref in disks_by_id:
                order.append(disks_by_id[ref])
        elif kind == RT_NIC and _text(item, "Address"):
            macs.append(_text(item, "Address").lower())
    disks = tuple(order or disks_by_id.values())
    if not disks or any(not d.file for d in disks):
        raise OvfError("the OVF names no disk files")
    firmware = "bios"
    for cfg in _children(vs, "Config"):
        if _attr(cfg, "key") == "firmware" and _attr(cfg, "value") == "efi":
            firmware = "uefi"  # VMware's vmw:Config
    if any(
        (_attr(fw, "type") or "").lower() == "efi" for fw in _children(vs, "Firmware")
    ):
        firmware = "uefi"
    return OvfMachine(name, cpus, memory, firmware, disks, tuple(macs))


def _manifest(text: str) -> dict[str, tuple[str, str]]:
    """'SHA256(disk1.vmdk)= abc...' -> {file: (algorithm, digest)}"""
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\w+)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$", line)
        if m:
            found[m.group(2)] = (m.group(1).lower(), m.group(3).lower())
    return found


@dataclass(frozen=True)
class Ova:
    path: Path
    machine: OvfMachine

    def extract_disk(self, disk: OvfDisk, dest: Path) -> Path:
        with tarfile.open(self.path) as tar:
            member = tar.getmember(disk.file)
            with tar.extractfile(member) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        return dest


def open_ova(path: Path) -> Ova:
    """Read and verify an OVA: the OVF parses, every disk it names is in
    the archive whole, and every file matches the manifest's digest."""
    try:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            ovf_name = next((n for n in members if n.lower().endswith(".ovf")), None)
            if ovf_name is None:
                raise OvfError(f"{path.name} holds no .ovf descriptor")
            machine = parse(tar.extractfile(ovf_name).read().decode("utf-8", "replace"))
            missing = [d.file for d in machine.disks if d.file not in members]
            if missing:
                raise OvfError(f"{path.name} lacks {', '.join(missing)}")
            mf = next((n for n in members if n.lower().endswith(".mf")), None)
            if mf:
                _verify(tar, members, tar.extractfile(mf).read().decode(), path.name)
            else:
                # No digests to check: at least every disk must be whole.
                for d in machine.disks:
                    with tar.extractfile(members[d.file]) as f:
                        while f.read(1 << 20):
                            pass
    except (tarfile.TarError, EOFError, OSError) as e:
        raise OvfError(f"{path.name} is not a readable OVA (truncated?): {e}") from None
    return Ova(path, machine)


def _verify(tar: tarfile.TarFile, members, manifest: str, label: str) -> None:
    for name, (algo, digest) in _manifest(manifest).items():
        if name not in members:
            raise OvfError(f"{label}: the manifest names {name}, which is missing")
        try:
            h = hashlib.new(algo)
        except ValueError:
            raise OvfError(f"{label}: unknown digest {algo} in the manifest") from None
        with tar.extractfile(members[name]) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise OvfError(
                f"{label}: {name} does not match its manifest digest (corrupt)"
            )


def open_ovf(path: Path) -> tuple[OvfMachine, list[Path]]:
    """An unpacked export: NAME.ovf with its disks (and NAME.mf) beside it.
    Returns the machine and its disk paths, verified like an OVA's."""
    try:
        machine = parse(path.read_text(errors="replace"))
    except OSError as e:
        raise OvfError(f"{path.name}: {e.strerror}") from None
    disks = [path.parent / d.file for d in machine.disks]
    missing = [d.name for d in disks if not d.is_file()]
    if missing:
        raise OvfError(f"{path.name} names {', '.join(missing)}, not found beside it")
    mf = path.with_suffix(".mf")
    if mf.is_file():
        for name, (algo, digest) in _manifest(mf.read_text()).items():
            h = hashlib.new(algo)
            with open(path.parent / name, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != digest:
                raise OvfError(f"{name} does not match its manifest digest (corrupt)")
    return machine, disks
