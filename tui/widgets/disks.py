"""The disk list and the description of one disk, as the Disks screen and
the P2V and V2P screens show them."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, Static

from converters.inventory import Disk
from tui import fmt

_BUS = {"sata": "SATA", "sas": "SAS", "nvme": "NVMe", "usb": "USB", "scsi": "SCSI"}


def bus(disk: Disk) -> str:
    return _BUS.get(disk.transport, disk.transport or "?")


def membership(disk: Disk) -> list[str]:
    """LVM or RAID, from the devices built on the disk and the signatures
    of its partitions."""
    found = set()
    for holder in disk.holders:
        found.add("RAID" if holder.startswith("md") else "LVM")
    for part in disk.partitions:
        if part.fstype == "LVM2_member":
            found.add("LVM")
        elif part.fstype == "linux_raid_member":
            found.add("RAID")
    return sorted(found)


def flags(disk: Disk) -> list[str]:
    """Short flags for the table; the detail pane spells them out."""
    out = []
    if disk.boot_medium:
        out.append("BOOT")
    if disk.removable:
        out.append("rem")
    if disk.read_only:
        out.append("ro")
    if disk.mounted:
        out.append("mnt")
    return out + membership(disk)


def label(disk: Disk) -> str:
    """One line for pick lists: name, size, bus, model, serial."""
    parts = [disk.name, fmt.size(disk.size), bus(disk)]
    parts += [p for p in (disk.model, disk.serial) if p]
    line = "  ".join(parts)
    return line + ("  (boot medium)" if disk.boot_medium else "")


class DiskTable(DataTable):
    DEFAULT_CSS = """
    DiskTable { height: auto; max-height: 12; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", **kwargs)
        for name, width in (
            ("Disk", 7),
            ("Size", 10),
            ("Bus", 6),
            ("Model", 15),
            ("Serial", 14),
            ("Flags", 14),
        ):
            self.add_column(name, width=width, key=name.lower())

    def show(self, disks: tuple[Disk, ...]) -> None:
        keep = self.cursor_row
        self.clear()
        for disk in disks:
            style = "bold" if disk.boot_medium else ""
            self.add_row(
                Text(disk.name, style=style),
                Text(fmt.size(disk.size), justify="right"),
                bus(disk),
                disk.model,
                disk.serial,
                " ".join(flags(disk)),
                key=disk.name,
            )
        if disks:
            self.move_cursor(row=min(keep, len(disks) - 1))


class DiskDetail(Static):
    """Everything known about one disk, flags in words."""

    DEFAULT_CSS = """
    DiskDetail { height: auto; padding: 0 1; }
    """

    def show(self, disk: Disk | None, used: dict | None = None) -> None:
        self.update(describe(disk, used) if disk else "No disk selected.")


def used_text(name: str, used: dict | None) -> str:
    """Bytes in use, "..." while being read, "" when unknown."""
    if used is None or name not in used:
        return "..."
    value = used[name]
    return "" if value is None else f"{fmt.size(value)} used"


def describe(disk: Disk, used: dict | None = None) -> Text:
    text = Text()
    text.append(disk.path, style="bold")
    text.append(f"  {fmt.size(disk.size)}  {bus(disk)}")
    for value in (disk.model, disk.serial):
        if value:
            text.append(f"  {value}")
    text.append("\n")
    if disk.partitions:
        for p in disk.partitions:
            line = f"  {p.name:<10}{fmt.size(p.size):>11}  {p.fstype or '-':<12}"
            line += f"{p.label or '':<17}{used_text(p.name, used)}"
            text.append(line.rstrip() + "\n")
    else:
        text.append("  no partitions\n")
    words = []
    if disk.boot_medium:
        words.append("ferry booted from this disk: it cannot be a V2P target")
    if disk.removable:
        words.append("removable")
    if disk.read_only:
        words.append("read-only")
    if disk.mounted:
        words.append("mounted at " + ", ".join(disk.mounted))
    for kind in membership(disk):
        holders = ", ".join(disk.holders)
        words.append(f"{kind} member" + (f" ({holders})" if holders else ""))
    if words:
        line = "; ".join(words)
        text.append(line[0].upper() + line[1:] + ".", style="bold")
    return text
