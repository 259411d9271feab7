"""The app and its factory. The app holds what every screen shares (the
machine, the checks, the server the technician paired with, the log of the
session) and moves between screens; the screens hold the rest.

Engines are imported in workers, not here: `ferry tui` must draw its first
screen in well under two seconds on a slow live machine.
"""

from __future__ import annotations

import importlib
import os
import time

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive, var

from tui.messages import ChecksDone, InventoryFailed, InventoryLoaded
from tui.probe import Probe

# Terminals whose palette is the 16 ANSI colours: the Linux VGA console and
# serial terminals. On them ferry uses a theme made of those colours only,
# instead of letting true colours be rounded to whatever is nearest.
SIXTEEN_COLOUR_TERMS = ("linux", "vt100", "vt102", "vt220", "ansi", "cons25")
ANSI_THEME = "ansi-dark"
THEME = "textual-dark"


def sixteen_colours(environ=os.environ) -> bool:
    term = environ.get("TERM", "")
    return (
        term in SIXTEEN_COLOUR_TERMS
        or term.endswith("-16color")
        or environ.get("TEXTUAL_COLOR_SYSTEM") == "standard"
    )


def _lazy(module: str, name: str):
    """A screen made on first use: `ferry tui` imports only what it draws."""

    def make():
        return getattr(importlib.import_module(f"tui.screens.{module}"), name)()

    return make


class FerryApp(App[str | None]):
    """Returns what the technician chose to do last: "reboot", "poweroff",
    "shell" or None (quit)."""

    CSS_PATH = "theme.tcss"
    TITLE = "ferry"
    # The palette is a mouse-and-search tool; the footer is the menu here.
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]
    # Made once and kept: a form keeps what was typed into it.
    SCREENS = {
        "disks": _lazy("disks", "DisksScreen"),
        "network": _lazy("network", "NetworkScreen"),
        "p2v": _lazy("p2v", "P2VScreen"),
        "v2p": _lazy("v2p", "V2PScreen"),
    }

    machine: reactive[object | None] = reactive(None)
    checks: reactive[list | None] = reactive(None)
    methods: var[dict] = var(dict)
    inventory_error = reactive("")
    pairing_text = var("")

    def __init__(
        self,
        probe: Probe,
        kernel: dict[str, str] | None = None,
        ansi: bool | None = None,
    ) -> None:
        super().__init__()
        self.probe = probe
        self.kernel = dict(kernel or {})
        self.ansi = sixteen_colours() if ansi is None else ansi
        self.log_lines: list[str] = []
        self._checks_started = False

    @property
    def include_loop(self) -> bool:
        return self.probe.include_loop

    @property
    def unattended(self) -> bool:
        # ferry.mode=shell is the live environment's business, not a flow.
        return self.kernel.get("ferry.mode") in ("p2v", "v2p")

    def on_mount(self) -> None:
        from tui.screens.machine import MachineScreen

        self.theme = ANSI_THEME if self.ansi else THEME
        self.push_screen(MachineScreen())
        # The inventory starts once the first screen is drawn, and the
        # checks once the inventory is: on a small live machine the disk
        # list is what the technician needs first, and the checks' dozen
        # subprocesses would compete with it for the CPUs.
        self.call_after_refresh(self.refresh_inventory)
        if self.unattended:
            self.start_unattended()

    # What the machine is: read in workers, shown by every screen that
    # watches the reactives.

    @work(thread=True, exclusive=True, group="inventory")
    def refresh_inventory(self) -> None:
        try:
            machine = self.probe.machine()
            methods = {n.name: self.probe.address_methods(n.name) for n in machine.nics}
        except Exception as e:  # shown on the machine screen
            self.post_message(InventoryFailed(f"cannot read this machine: {e}"))
            return
        self.post_message(InventoryLoaded(machine, methods))

    @work(thread=True, exclusive=True, group="doctor")
    def run_checks(self) -> None:
        self.post_message(ChecksDone(self.probe.checks()))

    @on(InventoryLoaded)
    def _inventory(self, event: InventoryLoaded) -> None:
        self.methods = event.methods
        self.inventory_error = ""
        self.machine = event.machine
        if self.checks is None and not self._checks_started:
            self._checks_started = True
            self.call_after_refresh(self.run_checks)

    @on(InventoryFailed)
    def _inventory_failed(self, event: InventoryFailed) -> None:
        self.inventory_error = event.error
        if not self._checks_started:
            self._checks_started = True
            self.run_checks()

    @on(ChecksDone)
    def _checks(self, event: ChecksDone) -> None:
        self.checks = event.checks

    # Flows.

    def run_flow(self, flow) -> None:
        from tui.screens.progress import ProgressScreen

        self.record(f"== {flow.title}")
        self.push_screen(ProgressScreen(flow))

    def show_outcome(self, outcome, replace: bool = False) -> None:
        from tui.screens.done import DoneScreen

        post = self.kernel.get("ferry.post") if self.unattended else None
        self.record(f"== {outcome.title}: {outcome.sentence}")
        screen = DoneScreen(outcome, post=post)
        if replace:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def start_unattended(self) -> None:
        from tui.flows import Outcome
        from tui.unattended import UnattendedError, flow_from_keys

        try:
            flow = flow_from_keys(self.kernel, self.include_loop)
        except UnattendedError as e:
            self.show_outcome(Outcome(False, "Unattended run cannot start", str(e)))
            return
        self.run_flow(flow)

    def go_home(self) -> None:
        # The stack is Textual's default screen, the machine screen, then
        # whatever the technician opened from it.
        while len(self.screen_stack) > 2:
            self.pop_screen()

    def record(self, line: str) -> None:
        """The session's log, for "save the logs to a USB stick"."""
        self.log_lines.append(f"{time.strftime('%H:%M:%S')} {line}")

    # Leaving.

    async def action_quit(self) -> None:
        from tui.screens.confirm import ConfirmModal

        def leave(yes: bool | None) -> None:
            if yes:
                self.exit(None)

        question = "Quit ferry?"
        if any(w.group == "flow" and w.is_running for w in self.workers):
            question = "A transfer is running. Stop it and quit ferry?"
        self.push_screen(ConfirmModal(question, yes="Quit"), leave)


def create_app(
    include_loop: bool = False,
    kernel: dict[str, str] | None = None,
    *,
    probe: Probe | None = None,
    ansi: bool | None = None,
) -> FerryApp:
    """The app as `ferry tui` runs it. ``kernel``: the ``ferry.*`` keys of
    the kernel command line (unattended when ``ferry.mode`` is set);
    ``probe``: a fixed machine for tests; ``ansi``: force (True) or refuse
    (False) the 16-colour theme, default from $TERM."""
    keys = {k: v for k, v in (kernel or {}).items() if k.startswith("ferry.")}
    return FerryApp(probe or Probe(include_loop), keys, ansi)
