"""What the app asks about this machine, in one place: the inventory, the
live-side doctor checks and how each NIC got its addresses. Tests and
snapshots hand the app a FixedProbe instead, so that a screenshot shows the
same machine on every host."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from converters.inventory import Machine

if TYPE_CHECKING:
    # doctor (argparse, hashlib, accel) is read when the checks run.
    from converters.doctor import Check


class Probe:
    def __init__(self, include_loop: bool = False) -> None:
        self.include_loop = include_loop

    def machine(self) -> Machine:
        from converters import inventory

        return inventory.machine(include_loop=self.include_loop)

    def checks(self) -> list[Check]:
        from converters import doctor

        # The storage path only matters to the KVM role's free-space check.
        return [make() for make in doctor.checks_for("live", Path("/var/lib/ferry"))]

    def configure(self, config) -> str:
        """Apply a converters.network_config.NicConfig; returns how."""
        from converters import network_config

        return network_config.apply(config)

    def used_space(self, partition) -> int | None:
        """Bytes in use on an inventory Partition, None when unknown."""
        from tui.used_space import used_bytes

        return used_bytes(f"/dev/{partition.name}", partition.fstype)

    def address_methods(self, nic: str) -> dict[str, str]:
        """Address -> "DHCP" or "static": the kernel marks leased addresses
        "dynamic" (they carry a lifetime), static ones live forever."""
        try:
            out = subprocess.run(
                ["ip", "-o", "addr", "show", "dev", nic],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        methods = {}
        for line in out.splitlines():
            words = line.split()
            if len(words) > 3:
                methods[words[3]] = "DHCP" if "dynamic" in words else "static"
        return methods


@dataclass
class FixedProbe(Probe):
    """A machine described by hand (snapshots, demos)."""

    fixed_machine: Machine
    fixed_checks: list[Check] = field(default_factory=list)
    methods: dict[str, dict[str, str]] = field(default_factory=dict)
    include_loop: bool = False
    configured: list = field(default_factory=list)  # what configure() got
    used: dict[str, int] = field(default_factory=dict)  # partition -> bytes

    def machine(self) -> Machine:
        return self.fixed_machine

    def used_space(self, partition) -> int | None:
        return self.used.get(partition.name)

    def configure(self, config) -> str:
        self.configured.append(config)
        return "networkd"

    def checks(self) -> list[Check]:
        return list(self.fixed_checks)

    def address_methods(self, nic: str) -> dict[str, str]:
        return dict(self.methods.get(nic, {}))
