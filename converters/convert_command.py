"""`ferry convert SESSION|DISK...`: make captured disks boot on KVM and
write (or define) the libvirt domain for them."""

from __future__ import annotations

import sys
from pathlib import Path

from converters import boot_check, convert
from converters.cli import FerryError
from converters.domain import define
from converters.domain.plan import DomainError, DomainOptions, spec_for
from converters.domain.spec import DomainSpec, parse_memory
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
    add_check_boot_arguments(p)
    p.add_argument(
        "--check-boot-only",
        action="store_true",
        help="convert nothing: boot-check the disks as they are now",
    )
    p.set_defaults(func=main)


def add_check_boot_arguments(p) -> None:
    p.add_argument(
        "--check-boot",
        action="store_true",
        help="then boot the VM once in a throwaway overlay, without network, "
        "and report whether it reaches userspace or where it stops",
    )
    p.add_argument(
        "--check-boot-timeout",
        type=float,
        metavar="SECONDS",
        help="give up the boot check after this long (default: "
        f"{boot_check.DEFAULT_TIMEOUT['kvm']:.0f} s under KVM, "
        f"{boot_check.DEFAULT_TIMEOUT['tcg']:.0f} s under TCG)",
    )


def _options(args) -> DomainOptions:
    try:
        memory = parse_memory(args.memory) if args.memory else None
    except ValueError as e:
        raise FerryError(str(e)) from None
    if args.vcpus is not None and args.vcpus < 1:
        raise FerryError("--vcpus must be at least 1")
    timeout = getattr(args, "check_boot_timeout", None)
    if timeout is not None and timeout <= 0:
        raise FerryError("--check-boot-timeout must be more than 0 seconds")
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
    if args.check_boot_only:
        return _check_as_is(source, options, events, args.check_boot_timeout)
    try:
        if not args.domain:
            result = convert.convert(source, events, pin_nics=args.pin_nics)
        else:
            result, files = convert_and_write_domain(
                source, events, options, args.libvirt, args.pin_nics
            )
        spec = spec_for(result, options) if args.check_boot else None
    except convert.ConversionError as e:
        raise FerryError(_failed(e, args.sources)) from None
    except DomainError as e:
        raise FerryError(f"converted, but no domain: {e}") from None
    if args.domain:
        print(files.xml, flush=True)
        if not files.defined_at:
            print(files.virsh_define, flush=True)
    if spec is not None:
        check_boot(spec, source.directory, events, args.check_boot_timeout)
    return 0


def check_boot(
    spec: DomainSpec,
    directory: Path,
    events: EventStream,
    timeout: float | None = None,
    done: str = "converted, but ",
) -> boot_check.BootCheck:
    """Boot the converted VM once (boot_check.run), its steps also in
    convert.log; raises FerryError when it does not reach userspace. The
    disks stay converted either way: the check only reports."""
    # the same log as the conversion's, so convert.log tells the whole run
    with convert._log_to_file(directory / convert.LOG_FILE, events):
        check = boot_check.run(spec, directory, events, timeout)
    if not check.boots:
        log = directory / boot_check.LOG_FILE
        raise FerryError(f"{done}the boot check failed: {check.failure()} (log: {log})")
    return check


def _check_as_is(source, options, events, timeout) -> int:
    from converters import boot_check_spec

    try:
        spec = boot_check_spec.as_is(source, options)
    except (convert.ConversionError, DomainError) as e:
        raise FerryError(f"cannot boot-check {source.directory}: {e}") from None
    check_boot(spec, source.directory, events, timeout, done="")
    return 0


def _failed(error: Exception, sources: list[Path]) -> str:
    return f"{error}; the disks are unchanged (log: {_log_path(sources)})"


def _log_path(sources: list[Path]) -> Path:
    first = sources[0]
    return (first if first.is_dir() else first.parent) / convert.LOG_FILE
