"""The first screen: what this machine is, whether ferry can work on it,
and the way to everything else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from converters.inventory import Machine
from tui import fmt
from tui.widgets.nics import NicTable
from tui.widgets.titlebar import TitleBar

if TYPE_CHECKING:
    from converters.doctor import Check


def system_text(machine: Machine) -> Text:
    from converters import __version__

    total = sum(d.size for d in machine.disks)
    rows = [
        ("Firmware", machine.firmware.upper(), "Hostname", machine.hostname or "-"),
        ("CPUs", str(machine.cpus), "Memory", fmt.size(machine.memory)),
        (
            "Disks",
            f"{len(machine.disks)} ({fmt.size(total)})",
            "ferry",
            __version__,
        ),
    ]
    text = Text()
    for a, av, b, bv in rows:
        text.append(f"{a:<9}", style="bold")
        text.append(f"{av:<24}")
        text.append(f"{b:<9}", style="bold")
        text.append(f"{bv}\n")
    text.append(f"{'CPU':<9}", style="bold")
    text.append(machine.cpu_model or "unknown model")
    return text


def checks_text(checks: list[Check]) -> Text:
    # Imported when the checks arrive, not before the first screen.
    from converters.doctor import OK

    problems = [c for c in checks if c.status != OK]
    if not problems:
        return Text(f"All {len(checks)} checks passed: this machine can capture.")
    text = Text()
    for i, c in enumerate(problems):
        text.append(f"{c.status:<5}", style="bold reverse" if c.status != OK else "")
        text.append(f" {c.name}: {c.detail}")
        if c.fix:
            text.append(f" - fix: {c.fix}")
        if i < len(problems) - 1:
            text.append("\n")
    return text


class MachineScreen(Screen):
    BINDINGS = [
        Binding("d", "app.push_screen('disks')", "Disks"),
        Binding("n", "app.push_screen('network')", "Network"),
        Binding("p", "app.push_screen('p2v')", "P2V"),
        Binding("v", "app.push_screen('v2p')", "V2P"),
        Binding("r", "refresh", "Refresh"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__(id="machine")

    def compose(self) -> ComposeResult:
        yield TitleBar("This machine")
        yield Static(
            "Reading firmware, CPUs, memory and disks...",
            id="system",
            classes="section",
        )
        yield NicTable(id="nics", classes="section")
        yield Static(
            "Running ferry doctor --role live...", id="checks", classes="section"
        )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#system").border_title = "This machine"
        self.query_one("#nics").border_title = "Network"
        self.query_one("#checks").border_title = "Checks (ferry doctor --role live)"
        self.watch(self.app, "machine", self._machine)
        self.watch(self.app, "inventory_error", self._error)
        self.watch(self.app, "checks", self._checks)

    def _machine(self, machine: Machine | None) -> None:
        if machine is None:
            return
        self.query_one("#system", Static).update(system_text(machine))
        self.query_one(NicTable).show(machine.nics, self.app.methods)

    def _error(self, error: str) -> None:
        if error:
            self.query_one("#system", Static).update(Text(error, style="bold"))

    def _checks(self, checks: list[Check] | None) -> None:
        if checks is not None:
            self.query_one("#checks", Static).update(checks_text(checks))

    def action_refresh(self) -> None:
        self.query_one("#checks", Static).update("Running ferry doctor --role live...")
        self.app.refresh_inventory()
        self.app.run_checks()
