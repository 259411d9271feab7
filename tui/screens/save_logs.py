"""Choose a USB stick (or one of its partitions) and write the session's
log to it."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, OptionList
from textual.widgets.option_list import Option

from tui.messages import LogsSaved
from tui.widgets.picker import ChoiceList


class SaveLogsModal(ModalScreen[None]):
    DEFAULT_CSS = """
    SaveLogsModal { align: center middle; }
    SaveLogsModal > Vertical {
        width: 70; height: auto; border: round $primary; padding: 0 1;
        background: $surface;
    }
    SaveLogsModal OptionList { height: auto; max-height: 8; }
    SaveLogsModal #status { margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        from tui.logsave import candidates

        machine = self.app.machine
        found = candidates(machine, self.app.include_loop) if machine else []
        with Vertical() as box:
            box.border_title = "Save the log to a USB stick"
            yield Label("Plug in a stick and choose where the log goes:")
            yield ChoiceList(
                *(Option(text, id=dev) for dev, text in found), compact=True
            )
            yield Label(
                "" if found else "No USB stick found: plug one in, then reopen.",
                id="status",
            )
        yield Footer()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#status", Label).update(f"writing to {event.option.id}...")
        self._save(event.option.id, list(self.app.log_lines))

    @work(thread=True, exclusive=True, group="save-logs")
    def _save(self, device: str, lines: list[str]) -> None:
        from tui.logsave import save

        try:
            self.post_message(LogsSaved(save(device, lines)))
        except OSError as e:
            self.post_message(LogsSaved("", str(e)))

    @on(LogsSaved)
    def _saved(self, event: LogsSaved) -> None:
        text = f"Saved as {event.where}." if event.where else f"Failed: {event.error}"
        self.query_one("#status", Label).update(text)
