"""The one event stream: engines emit, the TUI renders, the CLI prints and
unattended mode logs. Engines never know who listens."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    at: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class Step(Event):
    """A phase of a flow started, e.g. "map sda" or "rebuild initramfs"."""

    name: str
    detail: str = ""


@dataclass(frozen=True)
class Log(Event):
    level: str  # "info", "warning" or "error"
    message: str


@dataclass(frozen=True)
class LinkLost(Event):
    """The link to the server failed; the engine retries by itself (bytes
    moving again mean it is back), so listeners need not parse warnings."""

    reason: str


@dataclass(frozen=True)
class Progress(Event):
    """Bytes moved for one disk; skipped/saved say what the map and the
    compression spared the link."""

    disk: str
    done: int
    total: int
    rate: float = 0.0  # bytes per second, recent
    skipped: int = 0
    zero: int = 0
    saved: int = 0

    @property
    def eta(self) -> float | None:
        if self.rate <= 0:
            return None
        return (self.total - self.done) / self.rate


Listener = Callable[[Event], None]


class EventStream:
    """Fan-out of events to listeners; safe to emit from worker threads."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    def step(self, name: str, detail: str = "") -> None:
        self.emit(Step(name, detail))

    def log(self, message: str, level: str = "info") -> None:
        self.emit(Log(level, message))


def print_listener(stream=sys.stderr) -> Listener:
    """Plain lines for the CLI and unattended consoles."""

    def listen(event: Event) -> None:
        if isinstance(event, Step):
            print(
                f"== {event.name}" + (f": {event.detail}" if event.detail else ""),
                file=stream,
                flush=True,
            )
        elif isinstance(event, Log):
            prefix = "" if event.level == "info" else f"{event.level}: "
            print(prefix + event.message, file=stream, flush=True)
        elif isinstance(event, Progress):
            pct = 100.0 * event.done / event.total if event.total else 100.0
            print(
                f"{event.disk}: {pct:5.1f}% {event.done}/{event.total} bytes",
                file=stream,
                flush=True,
            )

    return listen
