"""Freeze filesystems for the last round of a live capture, and make sure
they thaw whatever happens to ferry.

A frozen filesystem blocks every writer on the machine, ferry's own writes
included, so a freeze that outlives its purpose is an outage. The freeze is
therefore held by a watchdog: a small Python process in its own session (a
SIGKILL or Ctrl-C of ferry's process group does not reach it) that freezes
on request and thaws when ferry asks, when its pipe from ferry closes (ferry
ended, however it ended), on SIGTERM/SIGINT/SIGHUP, or when the freeze has
lasted ``timeout`` seconds. Replies come back in order, so when ferry reads
"thawed" in answer to its own "thaw" it knows that every read it made
before asking happened while frozen; "timeout" means they may not have.

Protocol on the watchdog's stdin/stdout, one line each:
``freeze`` -> ``frozen T`` | ``error MESSAGE``; ``thaw`` -> ``thawed T`` |
``timeout T``. The watchdog says ``ready`` once it runs. The T are its
CLOCK_MONOTONIC (the same clock as ferry's ``time.monotonic``) just before
the first FIFREEZE and just after the last FITHAW: writers wait from the
moment FIFREEZE is called (it blocks new writes, then writes back the dirty
pages), so that is when the write downtime starts, not when it returns.

FIFREEZE/FITHAW are the ioctls fsfreeze(8) uses; calling them here avoids
starting a program while a filesystem that holds it may be frozen.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIFREEZE = 0xC0045877  # _IOWR('X', 119, int), linux/fs.h
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
# A freeze the watchdog ends on its own: long enough for the final round of
# a small dirty set on a slow link, short enough that services survive it.
DEFAULT_TIMEOUT = 60.0


class FreezeError(Exception):
    """Freezing failed (nothing is left frozen); one line for the user."""


class FreezeExpired(FreezeError):
    """The watchdog thawed on its timeout before ferry asked."""


@dataclass
class FreezeTimes:
    frozen_at: float = 0.0
    thawed_at: float = 0.0

    @property
    def seconds(self) -> float:
        return max(0.0, self.thawed_at - self.frozen_at)


class FreezeGuard:
    """The watchdog seen from ferry: ``start`` spawns it, ``freeze`` and
    ``thaw`` hold the freeze, ``close`` ends it (thawing if needed)."""

    def __init__(self, mountpoints: list[str], timeout: float = DEFAULT_TIMEOUT):
        self.mountpoints = list(mountpoints)
        self.timeout = timeout
        self.times = FreezeTimes()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    def __enter__(self) -> FreezeGuard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "converters.fsfreeze", str(self.timeout)]
            + self.mountpoints,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=env,
            # `-m` puts the working directory first on sys.path: run where
            # this ferry's own package is, never another checkout's
            cwd=PACKAGE_ROOT,
        )
        self._expect("ready")

    def freeze(self) -> None:
        self._send("freeze")
        reply = self._reply()
        word, _, at = reply.partition(" ")
        if word != "frozen":
            raise FreezeError(reply.removeprefix("error ").strip() or "watchdog died")
        self.frozen = True
        self.times.frozen_at = float(at)

    def thaw(self) -> None:
        """Ends the freeze; raises FreezeExpired if the watchdog had already
        thawed on its timeout (what was read frozen may not be)."""
        if not self.frozen:
            return
        self._send("thaw")
        reply = self._reply()
        word, _, at = reply.partition(" ")
        self.times.thawed_at = float(at) if at else time.monotonic()
        self.frozen = False
        if word != "thawed":
            raise FreezeExpired(
                f"the freeze ended before the final round did ({reply or 'no reply'})"
            )

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the watchdog thaws and exits on EOF
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait()
        proc.stdout.close()
        self.frozen = False

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise FreezeError(f"freeze watchdog gone: {e}") from None

    def _reply(self) -> str:
        return self.proc.stdout.readline().strip()

    def _expect(self, word: str) -> None:
        reply = self._reply()
        if reply != word:
            self.close()
            raise FreezeError(f"freeze watchdog did not start ({reply or 'no reply'})")


# The watchdog process.


def _ioctl(path: str, request: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def _thaw_all(frozen: list[str]) -> float:
    """Thaws; the time after the last FITHAW."""
    while frozen:
        path = frozen.pop()
        try:
            _ioctl(path, FITHAW)
        except OSError:
            pass  # EINVAL: not frozen (someone thawed it by hand)
    return time.monotonic()


def watchdog(timeout: float, mountpoints: list[str]) -> int:
    frozen: list[str] = []

    def on_signal(signum, frame):
        _thaw_all(frozen)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return _serve(timeout, mountpoints, frozen)
    except OSError:
        # Above all EPIPE: ferry died between asking and reading the answer
        # (seen: a SIGKILL right after "freeze" left both filesystems
        # frozen when answering "frozen" raised BrokenPipeError).
        return 0
    finally:
        _thaw_all(frozen)


def _serve(timeout: float, mountpoints: list[str], frozen: list[str]) -> int:
    out, inp = sys.stdout, sys.stdin.fileno()

    def say(word: str) -> None:
        print(word, file=out, flush=True)

    say("ready")
    deadline = None
    expired = False
    thawed_at = 0.0
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([inp], [], [], wait)
        if not ready:  # the freeze lasted `timeout`: end it, say so later
            thawed_at = _thaw_all(frozen)
            deadline, expired = None, True
            continue
        chunk = os.read(inp, 4096)
        if not chunk:
            return 0
        for command in chunk.decode().split():
            if command == "freeze":
                started = time.monotonic()
                try:
                    for path in mountpoints:
                        _ioctl(path, FIFREEZE)
                        frozen.append(path)
                except OSError as e:
                    _thaw_all(frozen)
                    say(f"error cannot freeze {path}: {e.strerror}")
                else:
                    deadline, expired = time.monotonic() + timeout, False
                    say(f"frozen {started!r}")
            elif command == "thaw":
                if not expired:
                    thawed_at = _thaw_all(frozen)
                deadline = None
                say(f"{'timeout' if expired else 'thawed'} {thawed_at!r}")


if __name__ == "__main__":
    sys.exit(watchdog(float(sys.argv[1]), sys.argv[2:]))
