"""``ferry tui [--loop] [--keys "ferry.mode=p2v ..."]``: the console app.

Unattended (``--keys`` with ``ferry.mode=``) on a terminal that cannot
draw the screens, or with no terminal at all, prints plain lines instead.
What the technician chose on the last screen happens here, after the app
has given the terminal back: reboot, power off, or a shell (after which
the app comes back).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

# Serial terminals that cannot be relied on for box drawing or cursor
# addressing at speed: unattended runs print lines there.
PLAIN_TERMS = ("dumb", "vt100", "vt102", "unknown", "")
# ferry only reboots or powers off the machine it booted (doctor.py uses
# the same marker).
LIVE_MARKER = Path("/etc/ferry-live")


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
    return dict(
        w.split("=", 1)
        for w in shlex.split(text)
        if w.startswith("ferry.") and "=" in w
    )


def main(args: argparse.Namespace) -> int:
    keys = parse_keys(args.keys)
    if keys.get("ferry.mode") and not _can_draw():
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
            return _power(result)
        return 0


def _can_draw() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM", "") not in PLAIN_TERMS


def _plain(keys: dict[str, str], include_loop: bool) -> int:
    from converters.events import EventStream, print_listener
    from tui.unattended import UnattendedError, flow_from_keys

    try:
        flow = flow_from_keys(keys, include_loop)
    except UnattendedError as e:
        print(f"ferry tui: {e}", file=sys.stderr)
        return 1
    events = EventStream()
    events.subscribe(print_listener(sys.stdout))
    print(f"== {flow.title}", flush=True)
    try:
        outcome = flow.run(events)
    except Exception as e:
        outcome = flow.failed(e)
    print(f"{outcome.title}: {outcome.sentence}", flush=True)
    if outcome.where:
        print(f"Result: {outcome.where}", flush=True)
    if not outcome.ok:
        return 1
    post = keys.get("ferry.post")
    return _power(post) if post in ("reboot", "poweroff") else 0


def _power(what: str) -> int:
    if not LIVE_MARKER.exists():
        print(f"ferry tui: not in the live environment, so no {what}", file=sys.stderr)
        return 0
    return subprocess.call(["systemctl", what])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command"))
    sys.exit(main(parser.parse_args(["tui", *sys.argv[1:]])))
