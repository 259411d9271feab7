"""`ferry capture --server PAIRING [--disks sda,sdb|all] [--name NAME]
[--compress auto|zstd|none] [--bandwidth RATE]`: the cold P2V client that
the TUI also calls. Run it again with the same --name (or --resume NAME) to
continue after a reboot of either side."""

from __future__ import annotations

import argparse
import sys

from converters.capture import CaptureError, CaptureRequest, capture
from converters.errors import FerryError
from converters.events import EventStream, print_listener
from converters.wire.client import UploadOptions
from converters.wire.errors import TransferError
from converters.wire.throttle import parse_rate


def rate(text: str) -> float:
    """--bandwidth: 50M or 50MB are bytes per second, 400Mbit bits."""
    try:
        return parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "capture", help="send this machine's disks to ferry serve (P2V)"
    )
    p.add_argument(
        "--server",
        required=True,
        metavar="PAIRING",
        help="pairing string printed by ferry serve",
    )
    p.add_argument(
        "--disks",
        default="all",
        help="comma-separated disk names or paths, or 'all' (default)",
    )
    p.add_argument("--name", help="session and VM name (default: the hostname)")
    p.add_argument(
        "--resume",
        metavar="NAME",
        help="continue the session NAME (same as --name NAME)",
    )
    p.add_argument("--compress", choices=("auto", "zstd", "none"), default="auto")
    p.add_argument(
        "--bandwidth",
        type=rate,
        metavar="RATE",
        help="cap the link use: 50M (bytes/s) or 400Mbit",
    )
    p.add_argument(
        "--loop",
        action="store_true",
        help="also offer loop devices (captures of image files)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="capture this running machine: disk pre-copy, then a short "
        "freeze of its filesystems (docs/live-capture.md)",
    )
    p.add_argument(
        "--writer-cgroup",
        metavar="CGROUP",
        help="with --live: cgroup v2 of the writers to limit (io.max)",
    )
    p.add_argument(
        "--writer-limit",
        type=rate,
        metavar="RATE",
        help="with --live: write rate allowed to --writer-cgroup while copying",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    events = EventStream()
    events.subscribe(print_listener(sys.stdout))
    if args.live:
        from converters.live_capture_command import run_live

        return run_live(args, events)
    request = CaptureRequest(
        server=args.server,
        disks=None if args.disks == "all" else args.disks.split(","),
        name=args.resume or args.name,
        options=UploadOptions(compress=args.compress, bandwidth=args.bandwidth),
        include_loop=args.loop,
    )
    try:
        result = capture(request, events)
    except (CaptureError, TransferError) as e:
        raise FerryError(str(e)) from None
    for name, stats in result.disks.items():
        print(
            f"{name}: {stats.data_sent} bytes sent as data, {stats.wire_bytes} on the "
            f"wire, {stats.skipped} skipped by the map, {stats.saved} saved by "
            f"compression"
        )
    print(f"capture {result.session} complete in {result.seconds:.1f} s")
    return 0
