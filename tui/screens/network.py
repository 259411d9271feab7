"""The NICs with their addresses and how each was configured, and a test
that the KVM host's ferry serve answers from here."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from converters.inventory import Machine
from tui.widgets.nics import NicTable
from tui.widgets.server import ServerField
from tui.widgets.titlebar import TitleBar

NOTE = (
    "Addresses come from the live environment's DHCP. How: DHCP (leased) or "
    "static (set by hand or on the kernel command line)."
)


class NetworkScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+t", "test", "Test connection"),
    ]

    def compose(self) -> ComposeResult:
        yield TitleBar("Network")
        yield NicTable(with_method=True, classes="section")
        yield Static(NOTE, classes="hint")
        yield Label("Server (pairing string from ferry serve)", classes="field-label")
        yield ServerField()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(NicTable).border_title = "Network interfaces"
        self.watch(self.app, "machine", self._machine)

    def _machine(self, machine: Machine | None) -> None:
        if machine is not None:
            self.query_one(NicTable).show(machine.nics, self.app.methods)

    def action_test(self) -> None:
        self.query_one(ServerField).test()
