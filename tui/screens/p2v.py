"""P2V: where to send this machine (the pairing string), which disks, and
the VM's name and size; then start. Everything is checked before a byte is
sent."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
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


def default_size(machine: Machine) -> tuple[int, int]:
    """vCPUs and memory (MiB) the VM gets unless the technician changes
    them: the machine's, within the caps the KVM side applies to them."""
    from converters.domain import spec

    return spec.vcpus(None, machine.cpus), spec.memory_mib(None, machine.memory)


def memory_text(mib: int) -> str:
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


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
    P2VScreen Horizontal { height: 1; }
    P2VScreen #name { width: 1fr; }
    P2VScreen .unit { width: auto; padding: 0 0 0 1; }
    P2VScreen #vcpus { width: 6; }
    P2VScreen #memory { width: 9; }
    """

    def compose(self) -> ComposeResult:
        yield TitleBar("P2V: capture this machine into a VM")
        yield Label("Server (pairing string from ferry serve)", classes="field-label")
        yield ServerField()
        yield Label("Disks to capture", classes="field-label")
        yield DiskPicker(id="disks", compact=True)
        yield Label("VM name and size", classes="field-label")
        with Horizontal():
            yield Input(
                placeholder="name of the VM on the KVM host", id="name", compact=True
            )
            yield Label("vCPUs", classes="unit")
            yield Input(id="vcpus", type="integer", max_length=3, compact=True)
            yield Label("memory", classes="unit")
            yield Input(id="memory", placeholder="4G", max_length=7, compact=True)
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
        vcpus, mib = default_size(machine)
        for field, value in (("#vcpus", str(vcpus)), ("#memory", memory_text(mib))):
            if not self.query_one(field, Input).value:
                self.query_one(field, Input).value = value
        self.query_one("#size", Static).update(
            f"This machine: {fmt.plural(machine.cpus, 'CPU')}, "
            f"{fmt.size(machine.memory)} memory."
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
        size = self._vm_size()
        if size is None:
            return
        self.problem("")
        request = CaptureRequest(
            server=server,
            disks=disks,
            name=name,
            include_loop=self.app.include_loop,
            vcpus=size[0],
            memory=size[1] << 20,
        )
        self.app.run_flow(P2VFlow(request))

    def _vm_size(self) -> tuple[int, int] | None:
        """vCPUs and memory (MiB) as typed, or None after saying why not."""
        from converters.domain import spec

        # The KVM side sizes the VM from the inventory within its caps, so
        # more than the caps cannot be asked from here.
        most = spec.MAX_DEFAULT_VCPUS
        text = self.query_one("#vcpus", Input).value.strip()
        if not text.isdigit() or not 1 <= int(text) <= most:
            self.problem(f"vCPUs: a whole number from 1 to {most}.")
            return None
        try:
            mib = spec.parse_memory(self.query_one("#memory", Input).value)
        except ValueError as e:
            self.problem(f"Memory: {e}.")
            return None
        low, high = spec.MIN_MEMORY_MIB, spec.MAX_DEFAULT_MEMORY_MIB
        if not low <= mib <= high:
            self.problem(
                f"Memory: {memory_text(low)} to {memory_text(high)} "
                "(ferry convert --memory on the KVM host gives more)."
            )
            return None
        return int(text), mib
