"""Unattended runs from the kernel command line (docs/unattended.md): with
``ferry.mode=p2v`` the live environment captures this machine to ``ferry
serve`` with no one at the console, printing plain progress lines on the
consoles (tty1 and the serial port), then does ``ferry.post``.

The run ends with one marker line, for a technician reading a serial log
and for tests:

    FERRY-UNATTENDED-DONE mode=p2v session=web01 seconds=312
    FERRY-UNATTENDED-FAILED mode=p2v reason=...

ferry.post happens after a successful run only: a failed one leaves the
machine at its console with the reason on the screen.

``python -m converters.unattended [--console DEV ...] [--cmdline TEXT]`` is
what ``ferry-unattended.service`` runs in the live image; it exits 0 once it
has reported, so the service is not retried by the consoles.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from converters import kernel_cmdline
from converters.events import Event, EventStream, Log, Progress, Step
from converters.kernel_cmdline import BootKeys
from converters.wire.pairing import Pairing

LIVE_MARKER = Path("/etc/ferry-live")  # power actions only in the live system
# A progress line per disk at most this often: a 115200-baud console and a
# person reading it both fall behind faster lines.
PROGRESS_EVERY = 10.0
# How long a booted machine waits for ferry serve to answer: a rack often
# boots before its conversion host, and DHCP can be slow.
SERVER_WAIT = 600.0
PROBE_EVERY = 5.0


class UnattendedError(Exception):
    """Why a run did not start or did not finish; one line."""


@dataclass
class Consoles:
    """Lines to every console that exists, and to stdout (the journal)."""

    paths: list[str]
    stdout: TextIO = sys.stdout
    started: float = field(default_factory=time.monotonic)
    _open: list[TextIO] = field(default_factory=list)

    def __post_init__(self) -> None:
        for path in self.paths:
            try:
                self._open.append(open(path, "w", buffering=1))  # noqa: SIM115
            except OSError:
                pass  # no UART behind ttyS0 on this machine

    def line(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.started:6.0f}s] "
        for out in [*self._open, self.stdout]:
            try:
                out.write(stamp + text + "\n")
                out.flush()
            except OSError:
                pass

    def close(self) -> None:
        for out in self._open:
            out.close()


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def progress_listener(out: Consoles, every: float = PROGRESS_EVERY):
    """Steps and logs as they come; progress per disk at most every `every`
    seconds, and always its last line."""
    last: dict[str, float] = {}

    def listen(event: Event) -> None:
        if isinstance(event, Step):
            out.line(f"== {event.name}" + (f": {event.detail}" if event.detail else ""))
        elif isinstance(event, Log):
            prefix = "" if event.level == "info" else f"{event.level}: "
            out.line(prefix + event.message)
        elif isinstance(event, Progress):
            finished = event.done >= event.total
            if not finished and event.at - last.get(event.disk, 0.0) < every:
                return
            last[event.disk] = event.at
            pct = 100.0 * event.done / event.total if event.total else 100.0
            text = (
                f"{event.disk}: {pct:5.1f}% {_gib(event.done)} of {_gib(event.total)}"
            )
            if event.rate > 0:
                text += f" at {event.rate / 1e6:.0f} MB/s"
            if event.eta is not None and not finished:
                text += f", {event.eta / 60:.0f} min left"
            if event.skipped:
                text += f" ({_gib(event.skipped)} unused, not sent)"
            out.line(text)

    return listen


def tcp_answers(pairing: Pairing, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((pairing.host, pairing.port), timeout):
            return True
    except OSError:
        return False


def choose_server(
    pairings: list[Pairing],
    out: Consoles,
    wait: float = SERVER_WAIT,
    answers: Callable[[Pairing], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Pairing:
    """The first server, in the order given, that accepts a connection;
    asks again until `wait` has passed."""
    answers = answers or tcp_answers
    deadline = time.monotonic() + wait
    said = 0.0
    while True:
        for pairing in pairings:
            if answers(pairing):
                out.line(f"ferry serve at {pairing.address} answers")
                return pairing
        now = time.monotonic()
        if now >= deadline:
            names = ", ".join(p.address for p in pairings)
            raise UnattendedError(f"no ferry serve answered at {names}")
        if now - said >= 30:
            names = ", ".join(p.address for p in pairings)
            out.line(f"waiting for ferry serve at {names} ...")
            said = now
        sleep(PROBE_EVERY)


def default_name(sys_net: Path = Path("/sys/class/net")) -> str:
    """A session name that differs between machines when ferry.name is not
    given: the live system's host name is the same everywhere, so the MAC of
    the first physical NIC names the machine."""
    for nic in sorted(sys_net.iterdir()) if sys_net.exists() else []:
        if (nic / "device").exists():
            mac = (nic / "address").read_text().strip().replace(":", "")
            if mac and mac != "000000000000":
                return f"p2v-{mac}"
    return "p2v-" + socket.gethostname()


def run_p2v(keys: BootKeys, out: Consoles, capture_fn=None, wait=SERVER_WAIT) -> str:
    """Capture this machine; returns the session name."""
    from converters.capture import CaptureError, CaptureRequest, capture
    from converters.wire.errors import WireError

    capture_fn = capture_fn or capture
    pairing = choose_server(keys.pairings(), out, wait)
    name = keys.name or default_name()
    events = EventStream()
    events.subscribe(progress_listener(out))
    request = CaptureRequest(
        server=str(pairing), disks=list(keys.disks) if keys.disks else None, name=name
    )
    try:
        result = capture_fn(request, events)
    except (CaptureError, WireError, OSError) as e:
        raise UnattendedError(str(e)) from None
    for disk, stats in result.disks.items():
        out.line(
            f"{disk}: {_gib(stats.data_sent)} sent as data, {_gib(stats.skipped)} "
            f"skipped by the map, {_gib(stats.saved)} saved by compression"
        )
    return result.session


def v2p_request(keys: BootKeys, out: Consoles, wait: float = SERVER_WAIT):
    """The deploy the keys ask for: ferry.image as the first answering
    server offers it, its disks onto ferry.target in order, confirmed by
    ferry.confirm. The engine still checks every disk before a byte is
    written."""
    from converters import deploy as engine

    pairing = choose_server(keys.pairings(), out, wait)
    offered = engine.list_images(pairing)
    found = [image for image in offered if image.name == keys.image]
    if not found:
        names = ", ".join(image.name for image in offered) or "none"
        raise UnattendedError(
            f"ferry serve at {pairing.address} offers no image {keys.image} "
            f"(it offers: {names}): nothing was written"
        )
    image = found[0]
    disks = [name for name, _ in image.disks]
    if len(keys.target) > len(disks):
        raise UnattendedError(
            f"ferry.target names {len(keys.target)} disks for an image of "
            f"{len(disks)}: nothing was written"
        )
    targets = [t if t.startswith("/dev/") else f"/dev/{t}" for t in keys.target]
    return engine.DeployRequest(
        image=image,
        targets=list(zip(disks, targets, strict=False)),
        confirm=list(keys.confirm),
        hostname=keys.hostname,
        report=keys.report,
    )


def run_v2p(keys: BootKeys, out: Consoles, wait: float = SERVER_WAIT) -> str:
    """Write the image onto this machine's disks and make it boot here;
    returns the image's name."""
    if importlib.util.find_spec("converters.deploy") is None:
        raise UnattendedError(
            "unattended V2P needs the deploy engine, which this build of ferry "
            "does not have: nothing was written"
        )
    from converters import deploy as engine
    from converters.wire.errors import WireError

    events = EventStream()
    events.subscribe(progress_listener(out))
    try:
        request = v2p_request(keys, out, wait)
        engine.deploy(request, events)  # logs what it wrote and verified
    except (engine.DeployError, WireError, OSError) as e:
        raise UnattendedError(str(e)) from None
    return request.image.name


def power(action: str, out: Consoles) -> None:
    if not LIVE_MARKER.exists():
        out.line(f"not in the ferry live environment: no {action}")
        return
    out.line(f"ferry.post={action}")
    time.sleep(1)  # let the serial port drain
    subprocess.run(["systemctl", action], check=False)


def run(keys: BootKeys, out: Consoles, flows=None, do_power=power) -> bool:
    """Report the keys' problems, run the flow they name, then ferry.post.
    True when the flow succeeded (or there was none to run)."""
    flows = flows or {"p2v": run_p2v, "v2p": run_v2p}
    for problem in keys.problems:
        out.line(problem.line())
    if not keys.unattended:
        return True
    out.line(kernel_cmdline.describe(keys))
    started = time.monotonic()
    try:
        if keys.fatal:
            raise UnattendedError("the ferry.* keys have errors (see above)")
        session = flows[keys.mode](keys, out)
    except UnattendedError as e:
        out.line(f"FERRY-UNATTENDED-FAILED mode={keys.mode} reason={e}")
        out.line("the consoles are yours: fix the cause and run it again")
        return False
    except Exception as e:  # anything else is a bug, but must be reported
        out.line(f"FERRY-UNATTENDED-FAILED mode={keys.mode} reason={e!r}")
        return False
    seconds = time.monotonic() - started
    out.line(
        f"FERRY-UNATTENDED-DONE mode={keys.mode} session={session} "
        f"seconds={seconds:.0f}"
    )
    if keys.post != "shell":
        do_power(keys.post, out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.unattended")
    parser.add_argument(
        "--console",
        action="append",
        default=[],
        metavar="DEV",
        help="also print on this terminal (repeat: /dev/tty1, /dev/ttyS0)",
    )
    parser.add_argument("--cmdline", help="the command line (default: this boot's)")
    args = parser.parse_args(argv)
    keys = (
        kernel_cmdline.parse(args.cmdline)
        if args.cmdline is not None
        else kernel_cmdline.read()
    )
    out = Consoles(args.console)
    try:
        run(keys, out)
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
