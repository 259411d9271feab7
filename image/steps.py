"""Running the build's commands: everything they print goes to the build
log, the console gets one line per step with its time, and a failure shows
the end of the failing command's output."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

TAIL_LINES = 40


class BuildError(RuntimeError):
    pass


def human_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def human_size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


class BuildLog:
    def __init__(self, path: Path, echo=sys.stdout) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 closed by close()
        self._echo = echo
        self.times: dict[str, float] = {}

    def close(self) -> None:
        self._file.close()

    def say(self, text: str) -> None:
        """A line for the person running the build (and the log)."""
        self._file.write(f"### {text}\n")
        if self._echo:
            print(f"image: {text}", file=self._echo, flush=True)

    def note(self, text: str) -> None:
        self._file.write(text.rstrip("\n") + "\n")

    @contextmanager
    def step(self, name: str):
        started = time.monotonic()
        self.say(f"{name} ...")
        yield
        self.times[name] = time.monotonic() - started
        self.say(f"{name}: done in {human_time(self.times[name])}")

    def run(
        self, cmd: list[str], *, cwd: Path | None = None, env=None, stdout=None
    ) -> None:
        """Run `cmd`, its output into the log (or stdout into a file)."""
        self.note("$ " + " ".join(str(c) for c in cmd))
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout or subprocess.PIPE,
            stderr=subprocess.STDOUT if stdout is None else subprocess.PIPE,
            text=True,
            errors="replace",
        )
        stream = proc.stdout if stdout is None else proc.stderr
        for line in stream:
            self._file.write(line)
            tail.append(line)
        if proc.wait() != 0:
            shown = "".join(tail)
            raise BuildError(
                f"{Path(str(cmd[0])).name} failed (exit {proc.returncode}); "
                f"last lines:\n{shown}\nwhole output: {self.path}"
            )
