"""The NICs with their addresses and how each was configured; DHCP or a
static address for the NIC under the cursor; a test that the KVM host's
ferry serve answers from here (run again by itself after a change)."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from converters.inventory import Machine
from tui.messages import NetworkApplied
from tui.widgets.nics import NicTable
from tui.widgets.server import ServerField
from tui.widgets.titlebar import TitleBar


class NetworkScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+g", "static", "Set static"),
        Binding("ctrl+r", "dhcp", "Use DHCP"),
        Binding("ctrl+t", "test", "Test connection"),
    ]
    DEFAULT_CSS = """
    NetworkScreen Horizontal { height: 1; }
    NetworkScreen #address { width: 22; }
    NetworkScreen #gateway { width: 18; }
    NetworkScreen #dns { width: 1fr; }
    NetworkScreen #net-status { height: auto; padding: 0 1; }
    NetworkScreen #net-status.-error { text-style: bold; color: $error; }
    """

    def compose(self) -> ComposeResult:
        yield TitleBar("Network")
        yield NicTable(with_method=True, classes="section")
        yield Label("", id="nic-label", classes="field-label")
        with Horizontal():
            yield Input(placeholder="address/prefix", id="address", compact=True)
            yield Input(placeholder="gateway", id="gateway", compact=True)
            yield Input(placeholder="DNS servers", id="dns", compact=True)
        yield Static(
            "ctrl+g sets the address typed here, ctrl+r goes back to DHCP.",
            id="net-status",
        )
        yield Label("Server (pairing string from ferry serve)", classes="field-label")
        yield ServerField()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(NicTable).border_title = "Network interfaces"
        self.watch(self.app, "machine", self._machine)

    def _machine(self, machine: Machine | None) -> None:
        if machine is not None:
            table = self.query_one(NicTable)
            row = table.cursor_row
            table.show(machine.nics, self.app.methods)
            if 0 < row < table.row_count:
                table.move_cursor(row=row)
            self._label()

    @on(NicTable.RowHighlighted)
    def _label(self) -> None:
        nic = self.query_one(NicTable).nic
        text = f"Address of {nic}" if nic else "Address (no NIC found)"
        self.query_one("#nic-label", Label).update(text)

    def status(self, text: str, error: bool = False) -> None:
        line = self.query_one("#net-status", Static)
        line.update(text)
        line.set_class(error, "-error")

    def action_static(self) -> None:
        from converters.network_config import NetworkConfigError, static

        nic = self.query_one(NicTable).nic
        if nic is None:
            self.status("No NIC to configure.", error=True)
            return
        try:
            config = static(
                nic,
                self.query_one("#address", Input).value,
                self.query_one("#gateway", Input).value,
                self.query_one("#dns", Input).value,
            )
        except NetworkConfigError as e:
            self.status(f"{nic}: {e}; nothing was changed.", error=True)
            return
        self._apply(config)

    def action_dhcp(self) -> None:
        from converters.network_config import dhcp

        nic = self.query_one(NicTable).nic
        if nic is None:
            self.status("No NIC to configure.", error=True)
            return
        self._apply(dhcp(nic))

    def _apply(self, config) -> None:
        what = "DHCP" if config.method == "dhcp" else config.address
        self.status(f"{config.nic}: setting {what}...")
        self._configure(config)

    @work(thread=True, exclusive=True, group="network")
    def _configure(self, config) -> None:
        try:
            how = self.app.probe.configure(config)
        except Exception as e:  # shown on the screen; the NIC is as it was
            self.post_message(NetworkApplied(config.nic, error=str(e)))
        else:
            self.post_message(NetworkApplied(config.nic, how))

    @on(NetworkApplied)
    def _applied(self, event: NetworkApplied) -> None:
        if event.error:
            self.status(f"{event.nic}: {event.error}", error=True)
            return
        self.status(f"{event.nic}: configured (through {event.how}).")
        self.app.refresh_inventory()
        # Whether the server answers now is the point of the change.
        if self.query_one(ServerField).text:
            self.action_test()

    def action_test(self) -> None:
        self.query_one(ServerField).test()
