"""One disk of a transfer: a bar plus the numbers that say whether it is
going well (rate, ETA) and what the map and compression spared."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label, ProgressBar

from converters.events import Progress
from tui import fmt


def amounts(p: Progress) -> str:
    return f"{fmt.size(p.done)} of {fmt.size(p.total)}"


def details(p: Progress) -> str:
    if p.total and p.done >= p.total:
        head = "all data sent"
    else:
        head = f"{fmt.rate(p.rate)}  ETA {fmt.duration(p.eta)}"
    # Zeros found in the data are in the CLI's summary; at 80 columns the
    # line keeps what the issue asks for: rate, ETA, skipped and saved.
    return f"{head}  skipped {fmt.size(p.skipped)}  saved {fmt.size(p.saved)}"


class DiskProgress(Widget):
    DEFAULT_CSS = """
    DiskProgress { height: 2; }
    DiskProgress Horizontal { height: 1; }
    DiskProgress .name { width: 8; text-style: bold; }
    DiskProgress ProgressBar { width: 40; }
    DiskProgress ProgressBar Bar { width: 32; }
    DiskProgress .amounts { width: 1fr; }
    DiskProgress .details { padding-left: 8; }
    """

    def __init__(self, disk: str, first: Progress | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.disk = disk
        # Events can come before the bar is composed: keep the newest and
        # draw it once mounted.
        self._latest = first

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label(self.disk, classes="name")
            yield ProgressBar(total=100, show_eta=False)
            yield Label("waiting", classes="amounts")
        yield Label("", classes="details")

    def on_mount(self) -> None:
        if self._latest is not None:
            self._draw(self._latest)

    def show(self, p: Progress) -> None:
        self._latest = p
        if self.is_mounted:
            self._draw(p)

    def _draw(self, p: Progress) -> None:
        # A disk with nothing to read (all skipped) is done at once.
        self.query_one(ProgressBar).update(total=p.total or 1, progress=p.done or 0)
        if not p.total:
            self.query_one(ProgressBar).update(progress=1)
        self.query_one(".amounts", Label).update(amounts(p))
        self.query_one(".details", Label).update(details(p))
