"""``ferry tui [--loop] [--keys "ferry.mode=p2v ..."]``: the console app.

With ``ferry.mode=`` in the keys it runs that flow unattended on the same
screens; on a terminal that cannot draw them, or with no terminal at all,
converters/unattended.py prints plain lines instead. What the technician
chose on the last screen happens here, after the app has given the
terminal back: reboot, power off, or a shell (after which the app comes
back).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# Serial terminals that cannot be relied on for box drawing or cursor
# addressing at speed: unattended runs print lines there.
PLAIN_TERMS = ("dumb", "vt100", "vt102", "unknown", "")


def register(subparsers) -> None:
    p = subparsers.add_parser("tui", help="the console app for P2V and V2P")
    p.add_argument(
        "--loop", action="store_true", help="also offer loop devices (tests, images)"
    )
    p.add_argument(
        "--keys",
        default="",
        metavar="KEYS",
        help='ferry.* keys as on a kernel command line, e.g. "ferry.mode=p2v '
        'ferry.server=HOST:PORT ferry.token=SECRET:FP" (runs unattended)',
    )
    p.set_defaults(func=main)


def parse_keys(text: str) -> dict[str, str]:
    """The ferry.* keys of a command line, split as the kernel splits it."""
    from converters.kernel_cmdline import split

    return {k: v for k, v in split(text) if k.startswith("ferry.") and v}


def main(args: argparse.Namespace) -> int:
    keys = parse_keys(args.keys)
    if keys.get("ferry.mode") in ("p2v", "v2p") and not _can_draw():
        return _plain(keys, args.loop)
    from tui.app import create_app
    from tui.terminal import children_to_log, forget_size_variables

    forget_size_variables()
    while True:
        with children_to_log():
            result = create_app(args.loop, keys).run()
        keys = {}  # unattended once; after a shell, the technician drives
        if result == "shell":
            subprocess.call([os.environ.get("SHELL", "/bin/sh")])
            continue
        if result in ("reboot", "poweroff"):
            from converters import unattended

            # Only inside the live environment; elsewhere it says so.
            unattended.power(result, unattended.Consoles([]))
        return 0


def _can_draw() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM", "") not in PLAIN_TERMS


def _plain(keys: dict[str, str], include_loop: bool) -> int:
    """The live environment's plain-line runner, on this terminal."""
    from dataclasses import replace

    from converters import unattended
    from converters.capture import capture
    from tui.unattended import boot_keys

    def capture_fn(request, events):
        return capture(replace(request, include_loop=include_loop), events)

    flows = {
        "p2v": lambda k, out: unattended.run_p2v(k, out, capture_fn=capture_fn),
        "v2p": unattended.run_v2p,
    }
    ok = unattended.run(boot_keys(keys), unattended.Consoles([]), flows=flows)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command"))
    sys.exit(main(parser.parse_args(["tui", *sys.argv[1:]])))
