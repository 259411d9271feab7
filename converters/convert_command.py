"""`ferry convert SESSION|DISK...`: make captured disks boot on KVM and
write (or define) the libvirt domain for them."""

from __future__ import annotations

import sys
from pathlib import Path

from converters import convert
from converters.cli import FerryError
from converters.domain import define
from converters.domain.plan import DomainError, DomainOptions, spec_for
from converters.domain.spec import parse_memory
from converters.events import EventStream, print_listener


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="make captured disks boot on KVM and write their libvirt domain",
        description=(
            "Convert a captured machine in place (virtio drivers in every "
            "initramfs, device names to UUID, NIC names pinned to their MACs, "
            "grub regenerated), all or nothing: a failure leaves the disks as "
            "they were. Then write NAME.xml and NAME.qemu.sh next to the disks "
            "and define the domain when --libvirt reaches libvirt."
        ),
    )
    p.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SESSION|DISK",
        help="a capture session folder, or disk images in the source's order",
    )
    p.add_argument("--name", default="", help="domain name (default: hostname)")
    p.add_argument("--vcpus", type=int, help="virtual CPUs (default: the source's)")
    p.add_argument(
        "--memory", help="memory, e.g. 4G or 2048M (default: the source's, capped)"
    )
    p.add_argument("--libvirt", metavar="URI", help="define the domain at this URI")
    p.add_argument("--network", default="default", help="libvirt network for the NICs")
    p.add_argument(
        "--no-pin-nics",
        dest="pin_nics",
        action="store_false",
        help="let NIC names follow the new hardware (not recommended)",
    )
    p.add_argument(
        "--no-domain",
        dest="domain",
        action="store_false",
        help="convert the disks only",
    )
    p.set_defaults(func=main)


def _options(args) -> DomainOptions:
    try:
        memory = parse_memory(args.memory) if args.memory else None
    except ValueError as e:
        raise FerryError(str(e)) from None
    if args.vcpus is not None and args.vcpus < 1:
        raise FerryError("--vcpus must be at least 1")
    return DomainOptions(args.name, args.vcpus, memory, args.network)


def convert_and_write_domain(
    source: convert.Source,
    events: EventStream,
    options: DomainOptions | None = None,
    libvirt_uri: str | None = None,
    pin_nics: bool = True,
) -> tuple[convert.Conversion, define.DomainFiles]:
    """The whole of `ferry convert`, for `ferry serve` to run when a capture
    completes (`source` from convert.load_source([session_dir])). Raises
    convert.ConversionError (disks unchanged) or DomainError."""
    result = convert.convert(source, events, pin_nics=pin_nics)
    spec = spec_for(result, options or DomainOptions())
    return result, define.write(spec, source.directory, events, libvirt_uri)


def main(args) -> int:
    options = _options(args)
    events = EventStream()
    events.subscribe(print_listener(sys.stderr))
    try:
        source = convert.load_source(args.sources)
    except convert.ConversionError as e:
        raise FerryError(str(e)) from None
    try:
        if not args.domain:
            convert.convert(source, events, pin_nics=args.pin_nics)
            return 0
        _, files = convert_and_write_domain(
            source, events, options, args.libvirt, args.pin_nics
        )
    except convert.ConversionError as e:
        raise FerryError(_failed(e, args.sources)) from None
    except DomainError as e:
        raise FerryError(f"converted, but no domain: {e}") from None
    print(files.xml)
    if not files.defined_at:
        print(files.virsh_define)
    return 0


def _failed(error: Exception, sources: list[Path]) -> str:
    return f"{error}; the disks are unchanged (log: {_log_path(sources)})"


def _log_path(sources: list[Path]) -> Path:
    first = sources[0]
    return (first if first.is_dir() else first.parent) / convert.LOG_FILE
