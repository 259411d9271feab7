"""`ferry capture --server PAIRING [--disks sda,sdb|all] [--name NAME]
[--compress auto|zstd|none] [--bandwidth RATE]`: the cold P2V client that
the TUI also calls. Run it again with the same --name (or --resume NAME) to
continue after a reboot of either side."""

from __future__ import annotations

import argparse
import re
import sys

from converters.capture import CaptureError, CaptureRequest, capture
from converters.errors import FerryError
from converters.events import EventStream, print_listener
from converters.wire.client import UploadOptions
from converters.wire.errors import TransferError

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgKMG]?)(B|B/s|b|bit|bps|bit/s)?")


def parse_rate(text: str) -> float:
    """Link rates as users write them: 500M, 1G, 1Gbit (bits per second) or
    50MB, 50MB/s (bytes per second); returns bytes per second."""
    m = _RATE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"bad rate {text!r}: use e.g. 500M or 1G (bits/s), 50MB (bytes/s)"
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return value if m.group(3) in ("B", "B/s") else value / 8


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
        type=parse_rate,
        metavar="RATE",
        help="cap the link use, e.g. 500M (bits/s)",
    )
    p.add_argument(
        "--loop",
        action="store_true",
        help="also offer loop devices (captures of image files)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    events = EventStream()
    events.subscribe(print_listener(sys.stdout))
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
