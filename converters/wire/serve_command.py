"""``ferry serve --storage DIR [--listen ADDR:PORT]``: the KVM side.

Prints the pairing string for the technician to type or scan on the live
side, and the same as kernel command-line keys for PXE configurations, then
receives sessions until SIGINT or SIGTERM (which flush and journal every open
disk before exiting).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from .errors import PairingError
from .pairing import advertised_host, load_or_create_identity, split_address
from .protocol import DEFAULT_PORT
from .storage import IDENTITY_DIR

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="receive disks from live machines into qcow2 (KVM side)",
        description=__doc__.split("\n\n")[1],
    )
    add_arguments(p)
    p.set_defaults(func=main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", required=True, type=Path, help="where sessions go")
    p.add_argument(
        "--listen",
        default=f"0.0.0.0:{DEFAULT_PORT}",
        metavar="ADDR:PORT",
        help=f"address to listen on (default 0.0.0.0:{DEFAULT_PORT}; port 0 picks one)",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST",
        help="address for the pairing string (default: the listen address, "
        "or the one the default route leaves from)",
    )
    p.add_argument(
        "--no-convert",
        dest="convert",
        action="store_false",
        help="do not convert captures as they complete (ferry convert SESSION)",
    )
    p.add_argument(
        "--check-boot",
        action="store_true",
        help="after each conversion, boot the VM once in a throwaway overlay "
        "without network and report whether it reaches userspace",
    )
    p.add_argument(
        "--check-boot-timeout",
        type=float,
        metavar="SECONDS",
        help="give up each boot check after this long "
        "(default: 300 s under KVM, 900 s under TCG)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        host, port = split_address(args.listen)
    except PairingError as e:
        print(f"ferry serve: {e}", file=sys.stderr)
        return 2
    if args.check_boot and not args.convert:
        print("ferry serve: --check-boot checks conversions: drop --no-convert",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.check_boot_timeout is not None and args.check_boot_timeout <= 0:
        print("ferry serve: --check-boot-timeout must be more than 0 seconds",
              file=sys.stderr)  # fmt: skip
        return 2
    storage = args.storage.resolve()
    try:
        storage.mkdir(parents=True, exist_ok=True)
        identity = load_or_create_identity(storage / IDENTITY_DIR)
    except OSError as e:
        print(f"ferry serve: cannot use storage {storage}: {e}", file=sys.stderr)
        return 1
    # kill -USR1 prints every thread's stack to stderr: a hung transfer
    # can be diagnosed on a host where no debugger is installed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # INFO lines of the wire reach whatever handler the CLI set up.
    logging.getLogger("converters").setLevel(logging.INFO)
    shown = args.advertise or advertised_host(host)

    def ready(bound: int) -> None:
        pairing = identity.pairing(shown, bound)
        print(f"ferry serve: listening on {host}:{bound}, storage {storage}")
        print(f"pairing: {pairing}")
        print(f"kernel: {pairing.kernel_keys()}", flush=True)

    try:
        settings = _settings(args)
        asyncio.run(_serve(storage, identity, host, port, ready, settings))
    except OSError as e:
        print(f"ferry serve: {e}", file=sys.stderr)
        return 1
    return 0


def _settings(args: argparse.Namespace):
    from .server import Settings

    return Settings(
        convert=args.convert,
        check_boot=args.check_boot,
        check_boot_timeout=args.check_boot_timeout,
    )


async def _serve(storage, identity, host, port, ready, settings=None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # aiohttp's server is imported only here: every other ferry command
    # (capture on the live side above all) loads this module for its parser.
    from .server import run

    await run(storage, identity, host, port, settings=settings, ready=ready, stop=stop)
    log.info("STOP storage=%s", storage)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    parser = argparse.ArgumentParser(prog="ferry serve")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
