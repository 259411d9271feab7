"""One line at the top: ferry, its version and where the technician is.

Textual's Header sets its title from a callback that can outlive a screen
replaced at once (a flow that fails in its first second), and it draws a
clock-less icon that means nothing here; this is a plain line."""

from __future__ import annotations

from textual.widgets import Static


class TitleBar(Static):
    DEFAULT_CSS = """
    TitleBar {
        dock: top;
        height: 1;
        width: 100%;
        background: $primary;
        color: $text;
        text-style: bold;
        padding: 0 1;
    }
    """

    def __init__(self, where: str) -> None:
        from converters import __version__

        super().__init__(f"ferry {__version__}  |  {where}")
