"""How a flow ended, in one sentence, where the result is, and what to do
next: reboot, power off, a shell, save the logs, retry (which resumes)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.flows import Outcome
from tui.widgets.titlebar import TitleBar

# Unattended runs carry out ferry.post= after this long, so that a
# technician who is watching can still stop it with any key.
POST_DELAY = 10
LAST_LINES = 8
POST_WORDS = {"reboot": "Rebooting", "poweroff": "Powering off", "shell": "Shell"}


class DoneScreen(Screen):
    DEFAULT_CSS = """
    DoneScreen #verdict { text-style: bold; padding: 1 1 0 1; }
    DoneScreen #verdict.-failed { color: $error; }
    DoneScreen #verdict.-ok { color: $success; }
    DoneScreen #sentence { padding: 1 1 0 1; }
    DoneScreen #where { padding: 0 1; }
    DoneScreen #countdown { padding: 1 1 0 1; text-style: bold reverse; }
    DoneScreen #tail { height: 1fr; margin-top: 1; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "retry", "Retry/resume"),
        Binding("l", "save_logs", "Save logs"),
        Binding("b", "post('reboot')", "Reboot"),
        Binding("o", "post('poweroff')", "Power off"),
        Binding("s", "post('shell')", "Shell"),
        Binding("m", "menu", "Menu"),
        Binding("p", "reports", "Reports"),
    ]

    def __init__(self, outcome: Outcome, post: str | None = None) -> None:
        super().__init__()
        self.outcome = outcome
        # ferry.post=shell (the default) leaves the technician here.
        self.post = post if post in ("reboot", "poweroff") and outcome.ok else None
        self.left = POST_DELAY
        self._timer = None

    def compose(self) -> ComposeResult:
        o = self.outcome
        mark = "DONE" if o.ok else "FAILED"
        verdict = Static(f"{mark}: {o.title}", id="verdict")
        verdict.add_class("-ok" if o.ok else "-failed")
        yield TitleBar(self.outcome.title)
        yield verdict
        yield Static(o.sentence, id="sentence")
        yield Static(Text.assemble(("Result: ", "bold"), o.where or "-"), id="where")
        if o.ok and o.conversion:
            from tui.widgets.conversion import ServerConversion

            yield ServerConversion(*o.conversion)
        yield Static("", id="countdown")
        yield Static(self._tail(), id="tail", classes="section")
        yield Footer()

    def _tail(self) -> str:
        lines = [line.split(" ", 1)[-1] for line in self.app.log_lines[-LAST_LINES:]]
        return "\n".join(lines) or "(no log)"

    def on_mount(self) -> None:
        self.query_one("#tail").border_title = "Last log lines"
        self.query_one("#countdown").display = bool(self.post)
        if self.post:
            self._tick()
            self._timer = self.set_interval(1, self._tick)

    def _tick(self) -> None:
        if self.left <= 0:
            self._timer.stop()
            self.app.exit(self.post)
            return
        self.query_one("#countdown", Static).update(
            f" {POST_WORDS[self.post]} in {self.left} s (ferry.post={self.post}): "
            "press any key to stay "
        )
        self.left -= 1

    def on_key(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
            self.query_one("#countdown").display = False

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "retry":
            return self.outcome.retry is not None
        if action == "reports":
            # False hides the key: only a deploy that armed a report has any
            return self.outcome.reports is not None
        return True

    def action_back(self) -> None:
        # Back to the form that started the flow, to correct it.
        self.app.pop_screen()

    def action_menu(self) -> None:
        self.app.go_home()

    def action_retry(self) -> None:
        if self.outcome.retry is not None:
            self.app.pop_screen()
            self.app.run_flow(self.outcome.retry)

    def action_reports(self) -> None:
        if self.outcome.reports is not None:
            from tui.screens.reports import ReportsScreen

            self.app.push_screen(ReportsScreen(*self.outcome.reports))

    def action_save_logs(self) -> None:
        from tui.screens.save_logs import SaveLogsModal

        self.app.push_screen(SaveLogsModal())

    def action_post(self, what: str) -> None:
        if what == "shell":
            self.app.exit("shell")
            return
        from tui.screens.confirm import ConfirmModal

        def answer(yes: bool | None) -> None:
            if yes:
                self.app.exit(what)

        question = "Reboot this machine now?" if what == "reboot" else "Power off now?"
        self.app.push_screen(ConfirmModal(question, yes=POST_WORDS[what]), answer)
