"""The `ferry` command: one subcommand per flow, each a thin shell over an
engine in `converters/`. A command module offers `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from converters import __version__
from converters.errors import FerryError

__all__ = ["FerryError", "main"]

# Imported lazily by name so that `ferry doctor` on a broken machine does not
# fail on an import that only another command needs.
COMMAND_MODULES = [
    "converters.doctor",
    "converters.wire.serve_command",
    "converters.capture_command",
    "converters.convert_command",
    "converters.import_command",
    "converters.deploy_command",
    "converters.migrate_command",
    "tui.command",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry",
        description="Move whole Linux systems between physical machines and KVM.",
    )
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = []
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # A binding only one command needs (python3-libvirt for migrate)
            # may be absent, e.g. on a server ferry captures live; a missing
            # part of ferry itself is a bug.
            if not e.name or e.name.split(".")[0] in ("converters", "tui"):
                raise
            missing.append(f"{name.rsplit('.', 1)[-1]} needs {e.name}")
            continue
        module.register(subparsers)
    if missing:
        parser.epilog = "Not available here: " + "; ".join(missing) + "."
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except FerryError as e:
        print(f"ferry {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ferry {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
