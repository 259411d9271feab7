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

# Imported lazily by name, and only the one a command line names: `ferry
# doctor` on a broken machine does not fail on an import that only another
# command needs, and a command does not pay for the others' imports (0.2-0.5 s
# of every deploy's and capture's start, measured).
COMMANDS = {
    "doctor": "converters.doctor",
    "serve": "converters.wire.serve_command",
    "capture": "converters.capture_command",
    "convert": "converters.convert_command",
    "import": "converters.import_command",
    "deploy": "converters.deploy_command",
    "migrate": "converters.migrate_command",
    "tui": "tui.command",
}
COMMAND_MODULES = list(COMMANDS.values())


def named_command(argv: list[str]) -> str | None:
    """The command a command line names: its first word that is no option
    (ferry's own options take no value)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or for ``command`` alone."""
    parser = argparse.ArgumentParser(
        prog="ferry",
        description="Move whole Linux systems between physical machines and KVM.",
    )
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    missing = []
    names = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for name in names:
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
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(named_command(argv))
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
