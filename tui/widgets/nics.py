"""The NICs of this machine: what the technician checks before a transfer
(is a cable in, did DHCP answer)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from converters.inventory import Nic


def link_text(nic: Nic) -> Text:
    # Words, not colour alone: a 16-colour console may show both alike.
    return Text("up", style="bold") if nic.link else Text("down", style="dim")


class NicTable(DataTable):
    DEFAULT_CSS = """
    NicTable { height: auto; max-height: 8; }
    """

    def __init__(self, with_method: bool = False, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.with_method = with_method
        self.row_nics: list[str] = []  # the NIC each row belongs to
        # 78 columns inside a border: the widths plus one cell of padding
        # on each side of each column.
        columns = [("NIC", 9), ("MAC", 17), ("Link", 4), ("Address", 24)]
        columns += [("How", 6)] if with_method else [("Driver", 12)]
        for name, width in columns:
            self.add_column(name, width=width, key=name.lower())

    def show(self, nics: tuple[Nic, ...], methods: dict | None = None) -> None:
        self.clear()
        self.row_nics = []
        methods = methods or {}
        for nic in nics:
            addresses = [a for a in nic.addresses if not a.startswith("fe80:")]
            first = addresses[0] if addresses else "no address"
            last = methods.get(nic.name, {}).get(first, "") if addresses else ""
            if not self.with_method:
                last = nic.driver
            self.add_row(nic.name, nic.mac, link_text(nic), first, last, key=nic.name)
            self.row_nics.append(nic.name)
            # Further addresses on rows of their own, under the NIC.
            for extra in addresses[1:]:
                how = methods.get(nic.name, {}).get(extra, "")
                self.add_row("", "", "", extra, how if self.with_method else "")
                self.row_nics.append(nic.name)

    @property
    def nic(self) -> str | None:
        """The NIC under the cursor."""
        if 0 <= self.cursor_row < len(self.row_nics):
            return self.row_nics[self.cursor_row]
        return None
