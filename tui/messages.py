"""App-wide messages. Workers post them from their threads (post_message is
thread-safe); screens and the app handle them with @on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from converters.doctor import Check
    from converters.events import Event
    from converters.inventory import Machine
    from tui.connect import ServerInfo
    from tui.deploy_link import Image
    from tui.flows import Outcome


@dataclass
class InventoryLoaded(Message):
    machine: Machine
    methods: dict[str, dict[str, str]]  # NIC -> address -> "DHCP"/"static"


@dataclass
class InventoryFailed(Message):
    error: str


@dataclass
class ChecksDone(Message):
    checks: list[Check]


@dataclass
class ConnectionTested(Message):
    """A "test connection" finished: ``server`` on success, else ``error``."""

    server: ServerInfo | None
    error: str = ""


@dataclass
class UsedSpaceRead(Message):
    """Partition name -> bytes in use (None: unknown), for one disk."""

    used: dict[str, int | None]


@dataclass
class NetworkApplied(Message):
    """A NIC's configuration was applied (``how``: networkd or ip), or
    ``error`` says why not."""

    nic: str
    how: str = ""
    error: str = ""


@dataclass
class ImagesListed(Message):
    images: list[Image]
    error: str = ""


@dataclass
class FlowEvent(Message):
    """One engine event, carried from the flow's worker thread."""

    event: Event

    def can_replace(self, message: Message) -> bool:
        # The uploader emits Progress per disk every 0.5 s; when the screen
        # falls behind only the newest of each disk matters. Steps and logs
        # are never dropped.
        from converters.events import Progress

        mine, theirs = self.event, getattr(message, "event", None)
        return (
            isinstance(message, FlowEvent)
            and isinstance(mine, Progress)
            and isinstance(theirs, Progress)
            and mine.disk == theirs.disk
        )


@dataclass
class FlowEnded(Message):
    outcome: Outcome


@dataclass
class LogsSaved(Message):
    where: str
    error: str = ""
