"""Per-disk counters of an upload, and the Progress events made from them.

``Progress`` fields (converters/events.py) as the uploader fills them:
``total`` is the DATA bytes of the map (what must be read), ``done`` the part
of it handled (sent, found zero, or committed by an earlier run),
``skipped`` the SKIP and ZERO bytes of the map (never read), ``zero`` the
DATA bytes that read as zeros and went as zero requests, ``saved`` the bytes
compression kept off the link.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from converters.events import EventStream, Progress

# At most one event per disk this often: a TUI redraw per 8 MiB chunk would
# cost more than the chunk.
EMIT_INTERVAL = 0.5
# The rate is measured over this window: long enough to smooth the steps of
# 8 MiB requests, short enough to follow a link that slows down.
RATE_WINDOW = 5.0


@dataclass
class DiskStats:
    """What happened to one disk; the byte counters a resume test reads."""

    name: str
    size: int = 0
    data_total: int = 0  # DATA bytes of the map
    skipped: int = 0  # SKIP + ZERO bytes of the map
    committed_before: int = 0  # DATA+ZERO bytes the server had at the start
    data_sent: int = 0  # DATA bytes acknowledged by the server
    wire_bytes: int = 0  # request bodies acknowledged (after compression)
    zero_detected: int = 0  # DATA bytes sent as zero requests
    zeroed: int = 0  # ZERO bytes of the map sent as zero requests
    saved: int = 0  # bytes compression kept off the link
    found_after_retry: int = 0  # DATA bytes the server had after a link failure
    resent: int = 0  # after a link failure: sent again, the server lacked it
    rejected: int = 0  # requests refused for a checksum mismatch
    link_failures: int = 0
    rounds: int = 0
    complete: bool = False


class Meter:
    """Thread-safe counters of one disk that emit throttled Progress."""

    def __init__(self, stats: DiskStats, events: EventStream) -> None:
        self.stats = stats
        self._events = events
        self._lock = threading.Lock()
        self._done = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last_emit = 0.0

    def start(self, done: int) -> None:
        with self._lock:
            self._done = done
            self._samples.clear()
        self.emit(force=True)

    def add(self, done: int = 0, **counters: int) -> None:
        with self._lock:
            self._done += done
            for key, value in counters.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)
        self.emit()

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_emit < EMIT_INTERVAL:
                return
            self._last_emit = now
            self._samples.append((now, self._done))
            while self._samples and now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            t0, d0 = self._samples[0]
            rate = (self._done - d0) / (now - t0) if now > t0 else 0.0
            s = self.stats
            event = Progress(
                s.name,
                min(self._done, s.data_total),
                s.data_total,
                rate=rate,
                skipped=s.skipped,
                zero=s.zero_detected,
                saved=s.saved,
            )
        self._events.emit(event)
