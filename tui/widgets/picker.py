"""Pick lists that read without colour: a chosen disk shows X, the others
show nothing (Textual's SelectionList tells them apart by colour alone,
which a 16-colour console may not), and the key that picks is in the
footer."""

from __future__ import annotations

from rich.segment import Segment
from textual.binding import Binding
from textual.strip import Strip
from textual.widgets import OptionList, SelectionList
from textual.widgets.option_list import OptionDoesNotExist


class DiskPicker(SelectionList[str]):
    BINDINGS = [Binding("space", "select", "Select/unselect")]

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        try:
            option = self.get_option_at_index(self.scroll_offset.y + y)
        except OptionDoesNotExist:
            return strip
        segments = list(strip)
        if option.value not in self.selected and len(segments) > 1:
            segments[1] = Segment(" " * len(segments[1].text), segments[1].style)
        return Strip(segments, strip.cell_length)


class ChoiceList(OptionList):
    """An OptionList whose Enter is named in the footer."""

    BINDINGS = [Binding("enter", "select", "Choose")]
