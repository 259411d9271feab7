"""What the server does with a capture once it is complete: its conversion
and the boot check of the converted VM, as `GET /v1/sessions/NAME` reports
them (`converters/wire/autoconvert.py`). Asked again every REFRESH seconds
until the conversion is converted or failed, so the technician at the cart
learns whether the machine will boot as a VM before leaving it."""

from __future__ import annotations

from dataclasses import dataclass

from textual import work
from textual.message import Message
from textual.widgets import Static

from tui import fmt

REFRESH = 10.0
ASK_TIMEOUT = 10.0


@dataclass
class ConversionPolled(Message):
    text: str
    final: bool = False  # converted or failed: nothing more will change
    bad: bool = False  # failed, or converted but the boot check failed


def describe(conversion: dict | None) -> ConversionPolled:
    """One line about a session's `conversion` field."""
    if not conversion:
        return ConversionPolled("Server: no conversion queued (--no-convert?)")
    state = conversion.get("state", "")
    step = conversion.get("step", "")
    if state == "queued":
        return ConversionPolled("Server: conversion queued")
    if state == "converting":
        if step.startswith("boot check"):
            return ConversionPolled("Server: converted; boot check running")
        return ConversionPolled(f"Server: converting ({step or 'starting'})")
    if state == "failed":
        error = conversion.get("error", "")
        return ConversionPolled(f"Server: conversion FAILED: {error}", True, True)
    took = fmt.duration(float(conversion.get("seconds", 0.0)))
    check = conversion.get("boot_check")
    if not check:
        return ConversionPolled(f"Server: converted in {took}; no boot check", True)
    booted = check.get("result") == "boots"
    verdict = "boot check" if booted else "boot check FAILED"
    text = f"Server: converted in {took}; {verdict}: {check.get('summary', '')}"
    return ConversionPolled(text, True, not booted)


class ServerConversion(Static):
    """Shown on the P2V Done screen; `server` is the pairing string. Words
    carry the verdict (FAILED), colour only repeats it."""

    DEFAULT_CSS = """
    ServerConversion { padding: 0 1; }
    ServerConversion.-failed { text-style: bold; color: $error; }
    """

    def __init__(self, server: str, session: str) -> None:
        super().__init__("Server: asking about the conversion...", id="conversion")
        self.server = server
        self.session = session
        self._timer = None

    def on_mount(self) -> None:
        self._ask()
        self._timer = self.set_interval(REFRESH, self._ask)

    @work(thread=True, exclusive=True, group="conversion")
    def _ask(self) -> None:
        from converters.wire.connection import WireClient
        from converters.wire.pairing import Pairing
        from tui.connect import explain

        try:
            client = WireClient(Pairing.parse(self.server), timeout=ASK_TIMEOUT)
            try:
                status = client.session(self.session)
            finally:
                client.close()
        except Exception as e:  # the server may be busy or gone: ask again
            text = explain(e, self.server)
            self.post_message(ConversionPolled(f"Server: cannot ask: {text}"))
            return
        self.post_message(describe(status.get("conversion")))

    def on_conversion_polled(self, event: ConversionPolled) -> None:
        self.update(event.text)
        self.set_class(event.bad, "-failed")
        if event.final and self._timer is not None:
            self._timer.stop()
            self._timer = None
