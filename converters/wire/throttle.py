"""``--bandwidth RATE``: a token bucket shared by every request of a client.

The bucket is kept as the time at which the link is next free (the GCRA
form), so one lock-protected subtraction per slice is all it costs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

# Slices of this size are sent between bucket checks: 256 KiB at 10 Mbit/s is
# 0.2 s, short enough that the rate looks steady to whoever shares the link.
SLICE = 256 << 10
# Idle time earns at most this much burst.
BURST_SECONDS = 0.25

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?(b|bit|bps|bit/s|b/s)?\s*$")


def parse_rate(text: str) -> float:
    """Bytes per second from ``RATE``.

    ``100M`` and ``100MB`` are bytes (10^6), ``100Mi`` / ``100MiB`` binary
    bytes, ``1Gbit`` / ``1Gbps`` bits; a bare number is bytes per second.
    """
    m = _RATE.match(text.lower())
    if not m:
        raise ValueError(f"bad rate {text!r}: use e.g. 50M, 200MiB, 1Gbit")
    number, prefix, unit = float(m[1]), m[2] or "", m[3] or ""
    scale = _BINARY.get(prefix) or _UNITS[prefix]
    bits = unit in ("bit", "bps", "bit/s")
    rate = number * scale / (8 if bits else 1)
    if rate <= 0:
        raise ValueError(f"bad rate {text!r}: must be positive")
    return rate


class TokenBucket:
    def __init__(self, rate: float, burst_seconds: float = BURST_SECONDS) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._burst = burst_seconds
        self._free_at = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        """Block until ``n`` more bytes fit in the rate."""
        with self._lock:
            now = time.monotonic()
            self._free_at = max(self._free_at, now - self._burst) + n / self.rate
            wait = self._free_at - now - self._burst
        if wait > 0:
            time.sleep(wait)

    def slices(self, data) -> Iterator[memoryview]:
        """``data`` in slices, each paid for before it is yielded."""
        view = memoryview(data)
        for pos in range(0, len(view), SLICE):
            piece = view[pos : pos + SLICE]
            self.consume(len(piece))
            yield piece
