"""The ``ferry.*`` keys of the kernel command line: how a PXE or GRUB
configuration runs a flow unattended (docs/unattended.md).

    ferry.mode=p2v ferry.server=10.0.0.5:7420 ferry.token=SECRET:FP
    ferry.disks=sda ferry.name=web01 ferry.post=poweroff

``parse()`` turns a command line into one `BootKeys`; every unknown key and
invalid value becomes a `Problem` with a sentence for the console, never a
silent default. A fatal problem stops an unattended run before it touches a
disk or the network: a typo in ``ferry.disks`` must not capture every disk.
``python -m converters.kernel_cmdline`` prints the problems of this boot.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from converters.wire.errors import PairingError
from converters.wire.pairing import Pairing, split_address
from converters.wire.protocol import NAME_RE

PREFIX = "ferry."
MODES = ("p2v", "v2p", "shell")
POSTS = ("reboot", "poweroff", "shell")
SWITCH = ("0", "1")
UNATTENDED = ("p2v", "v2p")
# Every key, with what it means (the console's hints; docs/unattended.md).
KEYS = {
    "ferry.mode": "p2v, v2p or shell; absent: the interactive console",
    "ferry.server": "HOST:PORT of ferry serve; several, comma-separated, are "
    "tried in order",
    "ferry.token": "SECRET:FINGERPRINT as ferry serve prints it (one, or one "
    "per server)",
    "ferry.disks": "p2v: disks to send, comma-separated names, or all",
    "ferry.name": "p2v: session and VM name",
    "ferry.image": "v2p: the image on ferry serve to write",
    "ferry.target": "v2p: disks to write, comma-separated names",
    "ferry.confirm": "v2p: the same disk names again, to allow erasing them",
    "ferry.hostname": "v2p: host name of the deployed system",
    "ferry.post": "after a successful run: reboot, poweroff or shell",
    "ferry.report": "v2p: 1 (default) the deployed system reports its first "
    "boot to ferry serve, 0 it does not",
}
# Keys that mean something in one mode only, and are reported elsewhere.
ONLY_IN = {
    "ferry.disks": "p2v",
    "ferry.name": "p2v",
    "ferry.image": "v2p",
    "ferry.target": "v2p",
    "ferry.confirm": "v2p",
    "ferry.hostname": "v2p",
    "ferry.report": "v2p",
}
_DISK = re.compile(r"^(/dev/)?[A-Za-z0-9][A-Za-z0-9._:+-]*(/[A-Za-z0-9._:+-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    fatal: bool = True  # an unattended run does not start

    def line(self) -> str:
        kind = "error" if self.fatal else "warning"
        return f"ferry: kernel command line: {kind}: {self.message}"


@dataclass(frozen=True)
class BootKeys:
    """What the ``ferry.*`` keys of one boot ask for. `given` holds every
    ``ferry.*`` key as written (the last of duplicates), for callers that
    take keys as a dict (``ferry tui --keys``)."""

    mode: str | None = None  # None: interactive console
    servers: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    disks: tuple[str, ...] | None = None  # None: every fixed disk
    name: str | None = None
    image: str | None = None
    target: tuple[str, ...] = ()
    confirm: tuple[str, ...] = ()
    hostname: str | None = None
    post: str = "shell"
    report: bool = True  # v2p: the deployed system reports its first boot
    problems: tuple[Problem, ...] = ()
    given: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def unattended(self) -> bool:
        return self.mode in UNATTENDED

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def pairings(self) -> list[Pairing]:
        """One pairing per server, in the order to try them; raises
        PairingError where parse() would report a problem."""
        tokens = self.tokens * len(self.servers) if len(self.tokens) == 1 else ()
        tokens = tokens or self.tokens
        if len(tokens) != len(self.servers):
            raise PairingError(reason="one ferry.token, or one per ferry.server")
        pairs = zip(self.servers, tokens, strict=True)
        return [Pairing.from_kernel(server, token) for server, token in pairs]


def split(cmdline: str) -> list[tuple[str, str | None]]:
    """Words as the kernel splits them: blanks separate, double quotes group
    (and are dropped), ``key=value`` or a bare ``key``."""
    words, word, quoted, started = [], [], False, False
    for ch in cmdline:
        if ch == '"':
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(ch)
            started = True
    if started:
        words.append("".join(word))
    pairs: list[tuple[str, str | None]] = []
    for w in words:
        key, eq, value = w.partition("=")
        pairs.append((key, value if eq else None))
    return pairs


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(","))


class _Parser:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.values: dict[str, object] = {}

    def problem(self, key: str, message: str, fatal: bool = True) -> None:
        self.problems.append(Problem(key, message, fatal))

    def unknown(self, key: str) -> None:
        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(KEYS)
        self.problem(key, f"unknown key {key} ({hint})")

    def choice(self, key: str, value: str, allowed: tuple[str, ...]) -> str | None:
        if value in allowed:
            return value
        self.problem(key, f"{key}={value} is not one of {', '.join(allowed)}")
        return None

    def names(self, key: str, value: str, allow_all: bool = False):
        if allow_all and value == "all":
            return None
        items = _list(value)
        bad = [i for i in items if not _DISK.match(i)]
        if bad:
            shown = ", ".join(repr(b) for b in bad)
            self.problem(key, f"{key}: not a disk name: {shown} (e.g. sda,nvme0n1)")
        return tuple(i.removeprefix("/dev/") for i in items)

    def servers(self, key: str, value: str) -> tuple[str, ...]:
        items = _list(value)
        for item in items:
            try:
                split_address(item)
            except PairingError as e:
                self.problem(key, f"{key}: {e} (expected HOST:PORT)")
        return items

    def label(self, key: str, value: str) -> str | None:
        if NAME_RE.match(value):
            return value
        self.problem(
            key, f"{key}={value}: use 1-64 of A-Z a-z 0-9 . _ - (starting alnum)"
        )
        return None

    def switch(self, key: str, value: str) -> bool | None:
        chosen = self.choice(key, value, SWITCH)
        return None if chosen is None else chosen == "1"

    def hostname(self, key: str, value: str) -> str | None:
        # {mac} and {serial} name each machine of a lab (converters/deploy):
        # the name is checked as it will read with them filled in.
        filled = value.replace("{mac}", "525400fe0101").replace("{serial}", "S1")
        labels = filled.split(".")
        if len(filled) <= 253 and all(_LABEL.match(x) for x in labels):
            return value
        self.problem(key, f"{key}={value} is not a valid host name (RFC 1123)")
        return None

    def value(self, key: str, value: str) -> None:
        readers = {
            "ferry.mode": lambda k, v: self.choice(k, v, MODES),
            "ferry.post": lambda k, v: self.choice(k, v, POSTS),
            "ferry.server": self.servers,
            "ferry.token": lambda k, v: _list(v),
            "ferry.disks": lambda k, v: self.names(k, v, allow_all=True),
            "ferry.target": self.names,
            "ferry.confirm": self.names,
            "ferry.name": self.label,
            "ferry.image": self.label,
            "ferry.hostname": self.hostname,
            "ferry.report": self.switch,
        }
        self.values[key] = readers[key](key, value)


def parse(cmdline: str) -> BootKeys:
    p = _Parser()
    given: dict[str, str] = {}
    for key, value in split(cmdline):
        if not key.startswith(PREFIX):
            continue  # the kernel's and init's own parameters
        if key not in KEYS:
            p.unknown(key)
            continue
        if value is None or value == "":
            p.problem(key, f"{key} needs a value ({key}=...): {KEYS[key]}")
            continue
        if key in given:
            p.problem(
                key,
                f"{key} is given twice ({given[key]!r}, then {value!r}); "
                "the last one counts",
                fatal=False,
            )
        given[key] = value
    for key, value in given.items():
        p.value(key, value)
    keys = BootKeys(
        **{
            k.removeprefix(PREFIX): v
            for k, v in p.values.items()
            if v is not None and k != "ferry.server" and k != "ferry.token"
        },
        servers=p.values.get("ferry.server") or (),
        tokens=p.values.get("ferry.token") or (),
        given=given,
    )
    _check_together(keys, given, p)
    return replace(keys, problems=tuple(p.problems), given=given)


def _check_together(keys: BootKeys, given: dict[str, str], p: _Parser) -> None:
    mode = keys.mode
    if mode in UNATTENDED:
        for needed in ("ferry.server", "ferry.token"):
            if needed not in given:
                p.problem(needed, f"ferry.mode={mode} needs {needed}=")
        if keys.servers and keys.tokens:
            try:
                keys.pairings()
            except PairingError as e:
                p.problem("ferry.token", f"ferry.token: {e}")
    if mode == "v2p":
        for needed in ("ferry.image", "ferry.target", "ferry.confirm"):
            if needed not in given:
                p.problem(needed, f"ferry.mode=v2p needs {needed}= ({KEYS[needed]})")
        unconfirmed = [t for t in keys.target if t not in keys.confirm]
        if unconfirmed and "ferry.confirm" in given:
            p.problem(
                "ferry.confirm",
                "ferry.confirm must name every disk of ferry.target; not "
                f"confirmed: {', '.join(unconfirmed)} (nothing will be written)",
            )
    for key, only in ONLY_IN.items():
        if key in given and mode in UNATTENDED and mode != only:
            p.problem(key, f"{key} applies to ferry.mode={only} only", fatal=False)
    if "ferry.post" in given and mode not in UNATTENDED:
        p.problem(
            "ferry.post",
            "ferry.post applies to unattended runs (ferry.mode=p2v or v2p) only",
            fatal=False,
        )


def read(path: Path | str = "/proc/cmdline") -> BootKeys:
    return parse(Path(path).read_text())


def describe(keys: BootKeys) -> str:
    """One line for the console: what this boot will do."""
    if keys.mode is None:
        return "no ferry.mode: the interactive console"
    if keys.mode == "shell":
        return "ferry.mode=shell: a shell on the consoles"
    if keys.fatal:
        return f"ferry.mode={keys.mode}: not started, fix the errors above"
    where = ", ".join(keys.servers)
    if keys.mode == "p2v":
        disks = ",".join(keys.disks) if keys.disks else "all fixed disks"
        return f"unattended P2V of {disks} to {where}, then {keys.post}"
    quiet = "" if keys.report else " (no first-boot report)"
    return (
        f"unattended V2P of image {keys.image} onto {','.join(keys.target)} "
        f"from {where}, then {keys.post}{quiet}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.kernel_cmdline",
        description="Check the ferry.* keys of a kernel command line.",
    )
    parser.add_argument("--cmdline", help="the command line (default: this boot's)")
    parser.add_argument(
        "--problems", action="store_true", help="print only problems, if any"
    )
    args = parser.parse_args(argv)
    keys = parse(args.cmdline) if args.cmdline is not None else read()
    for problem in keys.problems:
        print(problem.line())
    if not args.problems:
        print(describe(keys))
    return 1 if keys.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
