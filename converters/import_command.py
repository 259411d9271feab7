"""`ferry import SRC... [--name NAME] [--storage DIR]`: foreign VM disks
(VMDK, stream-optimised VMDK from an OVA, VHD, VHDX, VDI, raw, qcow2, or an
OVA whose OVF gives CPUs, memory, firmware and disk order) become qcow2 in
STORAGE/NAME, then go through the same conversion and domain as a capture.

Every input is checked before anything is written (format probe, the
format's own consistency check, the OVA's manifest), and a failure while
copying removes what was written: a bad input leaves no half-imported VM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from converters import convert, ovf
from converters.cli import FerryError
from converters.convert_command import add_check_boot_arguments, check_boot
from converters.domain import define
from converters.domain.plan import DomainError, DomainOptions, spec_for
from converters.domain.spec import parse_memory, safe_name
from converters.events import EventStream, print_listener
from converters.inventory import Disk, Machine

# qemu-img's names: VHD is "vpc"
FORMATS = ("vmdk", "vhdx", "vpc", "vdi", "raw", "qcow2")
# formats `qemu-img check` can verify (others are only probed)
CHECKABLE = ("vmdk", "vhdx", "vdi", "qcow2")


@dataclass(frozen=True)
class Image:
    path: Path
    format: str
    virtual_size: int


def probe(path: Path) -> Image:
    """The image's format and size, refusing what is not a whole image."""
    if not path.is_file():
        raise FerryError(f"{path}: no such file")
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise FerryError(f"{path.name}: not a readable disk image: {_last(out.stderr)}")
    info = json.loads(out.stdout)
    fmt = info["format"]
    if fmt not in FORMATS:
        raise FerryError(
            f"{path.name}: {fmt} images are not imported ({', '.join(FORMATS)})"
        )
    if fmt in CHECKABLE:
        check = subprocess.run(
            ["qemu-img", "check", "-f", fmt, str(path)], capture_output=True, text=True
        )
        # 0: clean; 3: leaked clusters only (harmless); anything else: damage
        if check.returncode not in (0, 3):
            raise FerryError(
                f"{path.name}: the {fmt} image is corrupt or truncated: "
                f"{_last(check.stdout + check.stderr)}"
            )
    if fmt == "raw" and path.stat().st_size % 512:
        raise FerryError(
            f"{path.name}: raw image size is not whole sectors (truncated?)"
        )
    return Image(path, fmt, info["virtual-size"])


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no detail"


def _to_qcow2(image: Image, dest: Path, events: EventStream) -> None:
    part = dest.with_name(dest.name + ".part")
    events.step("import", f"{image.path.name} ({image.format}) -> {dest.name}")
    out = subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            image.format,
            "-O",
            "qcow2",
            str(image.path),
            str(part),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        part.unlink(missing_ok=True)
        raise FerryError(
            f"{image.path.name}: cannot be read whole: {_last(out.stderr)}"
        )
    part.rename(dest)


def _disk_name(i: int) -> str:
    return "sd" + chr(ord("a") + i)


def import_images(
    sources: list[Path], storage: Path, name: str, events: EventStream
) -> convert.Source:
    """Check every input, then write STORAGE/NAME/{sdX.qcow2, inventory.json}.
    Sources: one .ova, one .ovf with its disks beside it, or disk images."""
    machine = ova = None
    staged: list[Path] = []
    if len(sources) == 1 and sources[0].suffix.lower() == ".ova":
        try:
            ova = ovf.open_ova(sources[0])
        except ovf.OvfError as e:
            raise FerryError(str(e)) from None
        machine = ova.machine
    elif len(sources) == 1 and sources[0].suffix.lower() == ".ovf":
        try:
            machine, paths = ovf.open_ovf(sources[0])
        except ovf.OvfError as e:
            raise FerryError(str(e)) from None
        images = [probe(p) for p in paths]
    else:
        images = [probe(p) for p in sources]
    folder = storage / safe_name(name or (machine.name if machine else sources[0].stem))
    if folder.exists() and any(folder.glob("*.qcow2")):
        raise FerryError(f"{folder} already holds an imported machine")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    disks: list[Path] = []
    try:
        if ova is not None:
            images = []
            for i, disk in enumerate(machine.disks):
                staged.append(
                    ova.extract_disk(disk, folder / f".{_disk_name(i)}.ova-disk")
                )
                images.append(probe(staged[-1]))
        for i, image in enumerate(images):
            dest = folder / f"{_disk_name(i)}.qcow2"
            _to_qcow2(image, dest, events)
            disks.append(dest)
    except BaseException:
        # remove what this import wrote, never what was there before it
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        for disk in disks:
            disk.unlink(missing_ok=True)
        raise
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    inventory = _inventory(machine, images, folder.name)
    (folder / "inventory.json").write_text(json.dumps(inventory.to_json(), indent=2))
    return convert.Source(tuple(disks), folder, folder.name, inventory)


def _inventory(
    machine: ovf.OvfMachine | None, images: list[Image], name: str
) -> Machine:
    disks = tuple(
        Disk(_disk_name(i), f"/dev/{_disk_name(i)}", img.virtual_size)
        for i, img in enumerate(images)
    )
    # No NICs: the foreign VM's NIC names are whatever the guest's own
    # configuration says; those are pinned to new MACs by the conversion.
    if machine:
        return Machine(
            machine.firmware, machine.cpus, machine.memory, disks=disks, hostname=name
        )
    return Machine("", 0, 0, disks=disks, hostname=name)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="import foreign VM disks or an OVA, convert them and write the domain",
        description=(
            "Copy VMDK, VHD, VHDX, VDI, raw or qcow2 disks (or an OVA) into "
            "qcow2 under STORAGE/NAME, convert the guest for KVM and write its "
            "domain. Inputs are checked before anything is written."
        ),
    )
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC")
    p.add_argument(
        "--name", default="", help="VM name (default: the OVF's or the file's)"
    )
    p.add_argument("--storage", type=Path, help="where to put it (default: beside SRC)")
    p.add_argument("--vcpus", type=int)
    p.add_argument("--memory", help="e.g. 4G or 2048M")
    p.add_argument("--libvirt", metavar="URI", help="define the domain at this URI")
    p.add_argument("--network", default="default", help="libvirt network for the NICs")
    add_check_boot_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    try:
        memory = parse_memory(args.memory) if args.memory else None
    except ValueError as e:
        raise FerryError(str(e)) from None
    if args.check_boot_timeout is not None and args.check_boot_timeout <= 0:
        raise FerryError("--check-boot-timeout must be more than 0 seconds")
    events = EventStream()
    events.subscribe(print_listener(sys.stderr))
    storage = (args.storage or args.sources[0].resolve().parent).resolve()
    source = import_images(
        [p.resolve() for p in args.sources], storage, args.name, events
    )
    try:
        result = convert.convert(source, events)
    except convert.ConversionError as e:
        raise FerryError(
            f"{e}; the imported disks are in {source.directory} "
            f"(log: {source.directory / convert.LOG_FILE})"
        ) from None
    options = DomainOptions(args.name, args.vcpus, memory, args.network)
    try:
        spec = spec_for(result, options)
    except DomainError as e:
        raise FerryError(str(e)) from None
    files = define.write(spec, source.directory, events, args.libvirt)
    print(files.xml, flush=True)
    if not files.defined_at:
        print(files.virsh_define, flush=True)
    if args.check_boot:
        done = "imported and converted, but "
        check_boot(spec, source.directory, events, args.check_boot_timeout, done)
    return 0
