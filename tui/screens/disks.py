"""Every disk this machine has, and all that is known about the one under
the cursor: what a technician checks before choosing what to capture or
to overwrite."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from converters.inventory import Disk, Machine
from tui.messages import UsedSpaceRead
from tui.widgets.disks import DiskDetail, DiskTable
from tui.widgets.titlebar import TitleBar

LEGEND = (
    "Flags: BOOT ferry's boot medium, rem removable, ro read-only, "
    "mnt mounted, LVM/RAID member"
)


class DisksScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        # Partition -> bytes in use (None: unknown), read once per disk.
        self.used: dict[str, int | None] = {}

    def compose(self) -> ComposeResult:
        yield TitleBar("Disks")
        yield DiskTable(classes="section")
        yield DiskDetail("Reading disks...", classes="section")
        yield Static(LEGEND, classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DiskTable).border_title = "Disks"
        self.query_one(DiskDetail).border_title = "Selected disk"
        self.watch(self.app, "machine", self._machine)

    def _machine(self, machine: Machine | None) -> None:
        if machine is None:
            return
        self.query_one(DiskTable).show(machine.disks)
        self._detail()
        if not machine.disks:
            self.query_one(DiskDetail).update("No disks found.")

    @on(DataTable.RowHighlighted)
    def _detail(self) -> None:
        machine, table = self.app.machine, self.query_one(DiskTable)
        if machine is None or not machine.disks:
            return
        row = min(max(table.cursor_row, 0), len(machine.disks) - 1)
        disk = machine.disks[row]
        self.query_one(DiskDetail).show(disk, self.used)
        if any(p.name not in self.used for p in disk.partitions):
            self._read_used(disk)

    @work(thread=True, exclusive=True, group="used")
    def _read_used(self, disk: Disk) -> None:
        # A superblock read per partition: quick, but not on the UI thread.
        used = {p.name: self.app.probe.used_space(p) for p in disk.partitions}
        self.post_message(UsedSpaceRead(used))

    @on(UsedSpaceRead)
    def _used_read(self, event: UsedSpaceRead) -> None:
        self.used.update(event.used)
        self._detail()

    def action_refresh(self) -> None:
        self.used.clear()
        self.app.refresh_inventory()
