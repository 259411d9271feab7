"""`ferry migrate VM --to DEST`: move a running KVM guest to another QEMU.

VM and DEST name QMP monitors (migrate_endpoint): `qmp:/path/to/socket` for
a QEMU on this host, `qmp:HOST:PORT` for one reached over TCP. The
destination QEMU is started by the caller with the guest's hardware and
`-incoming defer` (and, for `--storage copy`, its own empty disks of the
same sizes); ferry tells it where to listen. With `--libvirt URI`, VM is a
domain of that libvirt and DEST the destination libvirt's URI, as the
source's libvirtd reaches it; libvirt starts the destination. Progress is
one line per pre-copy round, and a table at the end. A migration that does
not complete leaves the guest running on the source and exits with status 1."""

from __future__ import annotations

import asyncio
import re
import sys

from converters.cli import FerryError
from converters.events import Event, EventStream, print_listener
from converters.migrate_endpoint import Endpoint, MigrationError
from converters.migrate_libvirt import LibvirtMigration
from converters.migrate_libvirt_controls import stream_uri
from converters.migrate_offline import run_offline
from converters.migrate_qmp import MigrationOptions, QmpMigration
from converters.migrate_report import MigrationReport, MigrationRound

# Where libvirt and QEMU put migration streams by default: the first port of
# the dynamic range (libvirt's migration_port_min, qemu.conf).
MIGRATION_PORT = 49152
_RATE = re.compile(r"(?i)^\s*([\d.]+)\s*([kmgt]?)(i?b?|bit|bps)?(/s)?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_rate(text: str) -> int:
    """Bytes/s from `32M` or `32MiB/s` (binary bytes, as QEMU's
    max-bandwidth) or `100Mbit` (decimal bits, as links are sold)."""
    found = _RATE.match(text)
    if not found:
        raise ValueError(f"bandwidth {text!r}: use e.g. 32M, 1G or 100Mbit")
    number, prefix, unit = float(found.group(1)), found.group(2).lower(), found.group(3)
    if unit and unit.lower() in ("bit", "bps"):
        return int(number * 1000 ** " kmgt".index(prefix or " ") / 8)
    return int(number * _UNITS[prefix])


def default_uri(dest: Endpoint) -> str:
    a = dest.address
    return f"unix:{a}.migrate" if isinstance(a, str) else f"tcp:{a[0]}:{MIGRATION_PORT}"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "migrate",
        help="move a running KVM guest to another host (pre-copy, seed policy)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "vm",
        metavar="VM",
        help="source QMP: qmp:/path or qmp:HOST:PORT (with --libvirt: a domain)",
    )
    p.add_argument(
        "--to",
        dest="dest",
        required=True,
        metavar="DEST",
        help="destination QMP (a QEMU started with -incoming defer), "
        "or with --libvirt the destination's libvirt URI",
    )
    p.add_argument(
        "--libvirt",
        metavar="URI",
        help="migrate the domain VM of this libvirt (e.g. qemu:///system) "
        "with libvirt, peer to peer",
    )
    p.add_argument(
        "--storage",
        choices=("shared", "copy"),
        default="shared",
        help="copy: mirror the disks to the destination over NBD",
    )
    p.add_argument(
        "--downtime",
        type=float,
        default=300,
        metavar="MS",
        help="downtime target in milliseconds (default 300)",
    )
    p.add_argument(
        "--bandwidth",
        type=parse_rate,
        metavar="RATE",
        help="cap the migration stream, e.g. 32M or 100Mbit",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="stop the guest, copy once, start it on the destination",
    )
    p.add_argument(
        "--policy",
        choices=("seed", "qemu"),
        default="seed",
        help="seed: ferry's rules (default); qemu: QEMU decides alone",
    )
    p.add_argument(
        "--auto-converge",
        action="store_true",
        help="with --policy qemu: QEMU's own auto-converge throttle",
    )
    p.add_argument(
        "--uri",
        help="migration stream address the source connects to "
        "(default: beside DEST's socket, or tcp:HOST:49152)",
    )
    p.add_argument("--listen", help="address DEST listens on, if not --uri")
    p.add_argument(
        "--nbd",
        help="NBD server on DEST for --storage copy (unix:/path or tcp:HOST:PORT)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up (guest stays on the source) after this long",
    )
    p.set_defaults(func=main)


def options_from(args) -> MigrationOptions:
    if args.auto_converge and args.policy != "qemu":
        raise FerryError("--auto-converge goes with --policy qemu (seed throttles)")
    if args.libvirt:
        if args.listen:
            raise FerryError("--listen is for QMP; libvirt listens where --uri says")
        try:
            # Checked here, before libvirt is asked; "" lets libvirt choose.
            uri = stream_uri(args.uri) if args.uri else ""
            nbd = stream_uri(args.nbd) if args.nbd else None
        except ValueError as e:
            raise FerryError(str(e)) from e
    else:
        uri, nbd = args.uri or default_uri(Endpoint.parse(args.dest)), args.nbd
    return MigrationOptions(
        uri=uri,
        listen=args.listen,
        policy=args.policy,
        auto_converge=args.auto_converge,
        downtime=args.downtime / 1000,
        bandwidth=args.bandwidth,
        storage=args.storage,
        nbd=nbd,
        timeout=args.timeout,
    )


def print_rounds(event: Event) -> None:
    if isinstance(event, MigrationRound):
        print(event.line(), file=sys.stderr, flush=True)


def main(args) -> int:
    if args.libvirt:
        return main_libvirt(args)
    try:
        source, dest = Endpoint.parse(args.vm), Endpoint.parse(args.dest)
    except ValueError as e:
        raise FerryError(str(e)) from e
    options = options_from(args)
    events = EventStream()
    events.subscribe(print_listener())
    events.subscribe(print_rounds)
    engine = QmpMigration(source, dest, options, events)
    run = run_offline(source, dest, options, events) if args.offline else engine.run()
    try:
        report = asyncio.run(run)
    except MigrationError as e:
        raise FerryError(str(e)) from e
    except KeyboardInterrupt:
        if engine.report:
            print(engine.report.table())
        raise
    return finish(report)


def main_libvirt(args) -> int:
    options = options_from(args)
    events = EventStream()
    events.subscribe(print_listener())
    events.subscribe(print_rounds)
    engine = LibvirtMigration(
        args.libvirt, args.vm, args.dest, options, events, offline=args.offline
    )
    try:
        report = engine.run()
    except MigrationError as e:
        raise FerryError(str(e)) from e
    except KeyboardInterrupt:
        if engine.report:
            print(engine.report.table())
        raise
    return finish(report)


def finish(report: MigrationReport) -> int:
    print(report.table())
    if report.completed:
        return 0
    where = "running" if report.source_running else "NOT running (check it!)"
    raise FerryError(
        f"migration {report.status}: {report.reason}; the guest is {where} "
        "on the source"
    )
