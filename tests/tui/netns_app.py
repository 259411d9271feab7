"""The app driven by the pilot inside a network namespace (not a test: the
test runs it with ``ip netns exec``, because the app must see the
namespace's NICs and reach the server through them, and a process cannot
move its threads there itself).

    python -m tests.tui.netns_app PAIRING NIC ADDRESS GATEWAY

Sets ADDRESS on NIC from the Network screen and prints three lines: the
screen's status, the connection test's result, the NIC's address row.
"""

from __future__ import annotations

import asyncio
import sys

from textual import events

from converters import inventory
from tests.tui.conftest import wait_for
from tui.app import create_app
from tui.probe import Probe


class NamespaceProbe(Probe):
    """The real probe, except that the namespace's veth counts as a NIC
    (the inventory leaves virtual interfaces out: they are not hardware)."""

    def __init__(self, veth: str) -> None:
        super().__init__()
        self.veth = veth

    def machine(self):
        from dataclasses import replace

        machine = super().machine()
        dev = inventory.SYS / "class/net" / self.veth
        veth = inventory.Nic(
            self.veth,
            inventory._read(dev / "address"),
            # carrier cannot be read while the link is down (EINVAL).
            inventory._read(dev / "carrier", "0") == "1",
            "veth",
            tuple(inventory._addresses(self.veth)),
        )
        return replace(machine, nics=(*machine.nics, veth))


async def drive(pairing: str, nic: str, address: str, gateway: str) -> list[str]:
    app = create_app(probe=NamespaceProbe(nic))
    async with app.run_test(size=(80, 25)) as pilot:
        await wait_for(
            pilot, lambda: app.machine or app.inventory_error, what="inventory"
        )
        assert app.machine, app.inventory_error
        await pilot.press("n")
        screen = app.screen
        screen.query_one("#pairing").post_message(events.Paste(pairing))
        table = screen.query_one("NicTable")
        await wait_for(pilot, lambda: nic in table.row_nics, what="the NIC")
        table.move_cursor(row=table.row_nics.index(nic))
        table.focus()
        await pilot.press("tab", *address, "tab", *gateway)
        await pilot.press("ctrl+g")
        status = screen.query_one("#net-status")
        server = screen.query_one(".status")
        await wait_for(pilot, lambda: "configured" in str(status.render()), 60)
        await wait_for(pilot, lambda: "OK" in str(server.render()), 60)
        await wait_for(
            pilot,
            lambda: any(address in n.addresses for n in app.machine.nics),
            what="the inventory showing the address",
        )
        await pilot.pause()
        row = table.get_row_at(table.row_nics.index(nic))
        return [
            str(status.render()),
            str(server.render()),
            " ".join(str(cell) for cell in row),
        ]


if __name__ == "__main__":
    for line in asyncio.run(drive(*sys.argv[1:5])):
        print(line)
