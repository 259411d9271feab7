"""The destructive confirmation of V2P: the technician types the name or
the serial of every disk that will be overwritten. Nothing less starts a
write (DESIGN.md: never write a disk without a confirmation naming it)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Static

from tui import fmt
from tui.deploy_link import Image, Mapping, confirm_matches
from tui.widgets.disks import bus


class EraseModal(ModalScreen[list[str] | None]):
    DEFAULT_CSS = """
    EraseModal { align: center middle; }
    EraseModal > Vertical {
        width: 74; height: auto; border: heavy $error; padding: 0 1;
        background: $surface;
    }
    EraseModal #warning { text-style: bold; margin-bottom: 1; }
    EraseModal .confirm-row { height: 1; }
    EraseModal .confirm-row Label { width: 12; }
    EraseModal .confirm-row Input { width: 1fr; }
    EraseModal #mismatch {
        width: 100%; text-style: bold; color: $error; margin-top: 1;
    }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+g", "confirm", "Erase and write"),
    ]

    def __init__(self, image: Image, mappings: list[Mapping]) -> None:
        super().__init__()
        self.image = image
        self.mappings = mappings

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "ERASE DISKS"
            yield Static(self._warning(), id="warning")
            yield Label("Type each disk's name or serial to confirm:")
            for i, m in enumerate(self.mappings):
                yield Horizontal(
                    Label(f"{m.target.name}:"),
                    Input(placeholder=m.target.name, id=f"confirm-{i}", compact=True),
                    classes="confirm-row",
                )
            yield Label("", id="mismatch")
        yield Footer()

    def _warning(self) -> Text:
        text = Text(f"Image {self.image.name} will be written over:\n")
        for m in self.mappings:
            d = m.target
            what = "  ".join(x for x in (d.model, d.serial) if x)
            text.append(f"  {d.name}  {fmt.size(d.size)}  {bus(d)}  {what}\n", "bold")
        text.append("Everything on these disks will be lost.")
        return text

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        ids = [f"confirm-{i}" for i in range(len(self.mappings))]
        index = ids.index(event.input.id)
        if index + 1 < len(ids):
            self.query_one(f"#{ids[index + 1]}", Input).focus()
        else:
            self.action_confirm()

    def action_confirm(self) -> None:
        typed = [
            self.query_one(f"#confirm-{i}", Input).value
            for i in range(len(self.mappings))
        ]
        for m, text in zip(self.mappings, typed, strict=True):
            if not confirm_matches(m.target, text):
                serial = f" or {m.target.serial}" if m.target.serial else ""
                self.query_one("#mismatch", Label).update(
                    f"That does not name {m.target.name}: type {m.target.name}"
                    f"{serial}. Nothing was written."
                )
                return
        self.dismiss([t.strip() for t in typed])

    def action_cancel(self) -> None:
        self.dismiss(None)
