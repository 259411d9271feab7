"""P2V: where to send this machine (the pairing string), which disks, and
the VM's name; then start. Everything is checked before a byte is sent."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, SelectionList, Static
from textual.widgets.selection_list import Selection

from converters.inventory import Disk, Machine
from tui import fmt
from tui.widgets.disks import label
from tui.widgets.picker import DiskPicker
from tui.widgets.server import ServerField
from tui.widgets.titlebar import TitleBar


def default_name(machine: Machine) -> str:
    """The VM's name: the host name, except in the live environment, whose
    host name is the same on every machine it boots (there the MAC of the
    first NIC names the machine, as in unattended runs)."""
    from converters import unattended

    if unattended.LIVE_MARKER.exists():
        return unattended.default_name()
    return machine.hostname or "capture"


def default_choice(disk: Disk) -> bool:
    """All fixed disks, as `ferry capture --disks all` takes them."""
    return not disk.removable and not disk.boot_medium


class P2VScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+t", "test", "Test connection"),
        Binding("ctrl+g", "start", "Start capture"),
    ]
    DEFAULT_CSS = """
    P2VScreen SelectionList { height: auto; max-height: 8; margin: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield TitleBar("P2V: capture this machine into a VM")
        yield Label("Server (pairing string from ferry serve)", classes="field-label")
        yield ServerField()
        yield Label("Disks to capture", classes="field-label")
        yield DiskPicker(id="disks", compact=True)
        yield Label("VM name", classes="field-label")
        yield Input(
            placeholder="name of the VM on the KVM host", id="name", compact=True
        )
        yield Static("", id="size", classes="hint")
        yield Static("", id="problem", classes="problem")
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "machine", self._machine)

    def _machine(self, machine: Machine | None) -> None:
        if machine is None:
            return
        picker = self.query_one("#disks", SelectionList)
        chosen = set(picker.selected) if picker.option_count else None
        picker.clear_options()
        for disk in machine.disks:
            picker.add_option(
                Selection(
                    label(disk),
                    disk.name,
                    default_choice(disk) if chosen is None else disk.name in chosen,
                    # The medium ferry runs from is never captured.
                    disabled=disk.boot_medium,
                )
            )
        name = self.query_one("#name", Input)
        if not name.value:
            name.value = default_name(machine)
        self.query_one("#size", Static).update(
            f"VM size: {fmt.plural(machine.cpus, 'vCPU')}, "
            f"{fmt.size(machine.memory)} memory, as this machine has."
        )

    def action_test(self) -> None:
        self.query_one(ServerField).test()

    def problem(self, text: str) -> None:
        self.query_one("#problem", Static).update(text)

    def action_start(self) -> None:
        from converters.capture import CaptureRequest
        from converters.wire.errors import PairingError
        from converters.wire.pairing import Pairing
        from converters.wire.protocol import valid_name
        from tui.flows import P2VFlow

        server = self.query_one(ServerField).text
        disks = list(self.query_one("#disks", SelectionList).selected)
        name = self.query_one("#name", Input).value.strip()
        try:
            Pairing.parse(server)
        except PairingError as e:
            self.problem(f"Server: {e}.")
            return
        if not disks:
            self.problem(
                "Choose at least one disk: space selects the one under the cursor."
            )
            return
        if not valid_name(name):
            self.problem("VM name: letters, digits, '.', '_' and '-', at most 64.")
            return
        self.problem("")
        request = CaptureRequest(
            server=server,
            disks=disks,
            name=name,
            include_loop=self.app.include_loop,
        )
        self.app.run_flow(P2VFlow(request))
