"""Retry with backoff for requests that met a dropped link."""

from __future__ import annotations

import random
import time

from converters.events import EventStream, LinkLost

from .errors import LinkDown, TransferError


class Backoff:
    FIRST = 0.25
    CAP = 8.0

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.delay = self.FIRST
        self.since: float | None = None

    def wait(self, err: Exception, events: EventStream) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            events.log(f"{err}; retrying", "warning")
            events.emit(LinkLost(str(err)))
        if now - self.since > self.timeout:
            raise TransferError(
                reason=f"server unreachable for {self.timeout:.0f} s: {err}"
            ) from err
        # Jitter: workers that failed together should not return together.
        time.sleep(self.delay * random.uniform(0.5, 1.0))
        self.delay = min(self.delay * 2, self.CAP)


def retry_call(func, timeout: float, events: EventStream):
    backoff = Backoff(timeout)
    while True:
        try:
            return func()
        except LinkDown as e:
            backoff.wait(e, events)
