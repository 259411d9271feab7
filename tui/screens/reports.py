"""The first-boot reports of one image, as the server has them: which
deployed machines came up (with the NIC and address they reported, and
how long after power-on), which have not yet. Asked again every 15 s."""

from __future__ import annotations

import time
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.widgets.titlebar import TitleBar

REFRESH = 15.0


@dataclass
class ReportsListed(Message):
    slots: list  # converters.wire.report_types.SlotStatus
    error: str = ""


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def line(slot) -> str:
    """One machine, in words that need no colour."""
    if slot.state == "up" and slot.report is not None:
        r = slot.report
        return (
            f"{slot.hostname:<20} UP at {_clock(slot.reported_at)}  {r.nic} "
            f"{r.mac} {r.addr}, {r.boot_seconds:.0f} s after boot"
        )
    return f"{slot.hostname:<20} waiting since {_clock(slot.created_at)}"


def summary(slots: list) -> str:
    up = sum(1 for s in slots if s.state == "up")
    return f"{up} of {len(slots)} machines reported up" if slots else "no reports"


class ReportsScreen(Screen):
    DEFAULT_CSS = """
    ReportsScreen #summary { text-style: bold; padding: 1 1 0 1; }
    ReportsScreen #slots { height: 1fr; margin-top: 1; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self, server: str, image: str) -> None:
        super().__init__()
        self.server = server
        self.image = image

    def compose(self) -> ComposeResult:
        yield TitleBar(f"First-boot reports of {self.image}")
        yield Static("Asking the server...", id="summary")
        yield Static("", id="slots", classes="section")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#slots").border_title = "Deployed machines"
        self.action_refresh()
        self.set_interval(REFRESH, self.action_refresh)

    def action_refresh(self) -> None:
        self._ask()

    @work(thread=True, exclusive=True, group="reports")
    def _ask(self) -> None:
        from converters.deploy_report import list_reports
        from converters.wire.pairing import Pairing
        from tui.connect import explain

        try:
            slots = list_reports(Pairing.parse(self.server), self.image)
        except Exception as e:
            self.post_message(ReportsListed([], explain(e, self.server)))
            return
        self.post_message(ReportsListed(slots))

    @on(ReportsListed)
    def _listed(self, event: ReportsListed) -> None:
        head = event.error or summary(event.slots)
        self.query_one("#summary", Static).update(head)
        text = "\n".join(line(s) for s in event.slots)
        self.query_one("#slots", Static).update(text or "(none)")
