"""Where a migration's QEMUs are: their QMP monitors, named on the command
line as `qmp:/path/to/socket` (a QEMU on this host) or `qmp:HOST:PORT`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from qemu.qmp import ConnectError, QMPClient

# NBD's registered port (IANA 10809), for a destination reached over TCP.
NBD_PORT = 10809


class MigrationError(Exception):
    """The migration could not start; the guest was not touched."""


@dataclass(frozen=True)
class Endpoint:
    address: str | tuple[str, int]

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        body = text.removeprefix("qmp:")
        if "/" in body:
            return cls(body)
        found = re.fullmatch(r"\[?([^\]]+?)\]?:(\d+)", body)
        if found:
            return cls((found.group(1), int(found.group(2))))
        raise ValueError(f"{text!r}: expected qmp:/path/to/socket or qmp:HOST:PORT")

    @property
    def local(self) -> bool:
        """A unix socket: the QEMU runs on this host, on this host's clock."""
        return isinstance(self.address, str)

    def default_nbd(self) -> str:
        """Where this destination's NBD server listens unless told: beside
        its QMP socket, or NBD's port on its host."""
        a = self.address
        return f"unix:{a}.nbd" if isinstance(a, str) else f"tcp:{a[0]}:{NBD_PORT}"

    def __str__(self) -> str:
        a = self.address
        return f"qmp:{a}" if isinstance(a, str) else f"qmp:{a[0]}:{a[1]}"


async def connect(endpoint: Endpoint, name: str) -> QMPClient:
    qmp = QMPClient(f"ferry-{name}")
    try:
        await qmp.connect(endpoint.address)
    except (ConnectError, OSError) as e:
        raise MigrationError(f"cannot reach the {name} QMP at {endpoint}: {e}") from e
    return qmp
