"""What a migration reports: one `MigrationRound` event per pre-copy round on
the event stream, and a `MigrationReport` at the end with the numbers every
migration owes its user (DESIGN.md: rounds, total time, downtime, bytes).

Shared by the live engines (migrate_qmp, migrate_libvirt), the offline one
(migrate_offline) and `ferry migrate`, which prints a round as one line and
the report as a table."""

from __future__ import annotations

from dataclasses import dataclass, field

from converters.events import Event
from converters.precopy_policy import Decision, Round

MiB = 1 << 20


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


@dataclass(frozen=True)
class MigrationRound(Event):
    """One pre-copy round as the policy saw it, and what it decided."""

    number: int  # QEMU's dirty-sync count - 1: round 1 is the full first pass
    sent: int  # bytes on the wire during the round (memory + disks)
    dirtied: int  # bytes the guest dirtied during the round
    remaining: int  # dirty memory + disk left at the end of the round
    bandwidth: float  # bytes/s over the round
    elapsed: float  # seconds since `migrate`
    throttle: int  # % CPU throttle QEMU applied during the round
    action: str  # the policy's action (precopy_policy.Action value)
    rule: str
    reason: str
    disk_remaining: int = 0  # part of `remaining` that is disk (mirror)

    @classmethod
    def of(
        cls, r: Round, d: Decision, throttle: int, disk_remaining: int = 0
    ) -> MigrationRound:
        """The event for one round the policy judged, as every engine emits it."""
        return cls(
            r.number,
            r.bytes_sent,
            r.bytes_dirtied,
            r.bytes_remaining,
            r.bandwidth,
            r.elapsed,
            throttle,
            d.action.value,
            d.rule,
            d.reason,
            disk_remaining,
        )

    def line(self) -> str:
        disk = f" (disk {mib(self.disk_remaining)})" if self.disk_remaining else ""
        return (
            f"round {self.number:>2} {self.elapsed:6.1f}s sent {mib(self.sent)} "
            f"dirtied {mib(self.dirtied)} left {mib(self.remaining)}{disk} "
            f"at {self.bandwidth / MiB:.1f} MiB/s throttle {self.throttle}% "
            f"-> {self.action}" + (f": {self.reason}" if self.reason else "")
        )


@dataclass
class MigrationReport:
    """The outcome. `status` is completed, cancelled (by the user or a
    timeout), aborted (by the policy) or failed; in every case but completed
    the guest was left running on the source (`source_running` says whether
    it was seen running)."""

    status: str
    policy: str
    memory: int  # guest RAM, bytes
    mode: str = "live"  # live or offline
    rounds: list[MigrationRound] = field(default_factory=list)
    total_time: float = 0.0  # seconds from `migrate` to the end
    downtime: float | None = None  # seconds the guest was paused, QEMU's count
    # source STOP to destination RESUME, from both QEMUs' event timestamps
    # (same host only): QEMU's count ends when the source has sent all
    downtime_observed: float | None = None
    ram_bytes: int = 0  # memory bytes on the wire, stop-and-copy included
    disk_bytes: int = 0  # bytes the mirror copied
    disk_size: int = 0
    max_throttle: int = 0  # highest % CPU throttle QEMU applied
    ended_by: str = ""  # the rule, "qemu" (its own downtime test) or an event
    reason: str = ""
    source_running: bool | None = None
    destination_running: bool | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def sent_factor(self) -> float:
        """Bytes sent relative to what was moved (Xen caps pre-copy at 3x)."""
        size = self.memory + self.disk_size
        return (self.ram_bytes + self.disk_bytes) / size if size else 0.0

    def rows(self) -> list[tuple[str, str]]:
        down = "-" if self.downtime is None else f"{self.downtime * 1000:.0f} ms"
        if self.downtime_observed is not None:
            down += f" ({self.downtime_observed * 1000:.0f} ms stop to resume)"
        rows = [
            ("status", self.status),
            ("mode", self.mode),
            ("policy", self.policy),
            ("rounds", str(len(self.rounds))),
            ("total time", f"{self.total_time:.1f} s"),
            ("downtime", down),
            ("memory sent", f"{mib(self.ram_bytes)} of {mib(self.memory)}"),
        ]
        if self.disk_size:
            rows.append(
                ("disk sent", f"{mib(self.disk_bytes)} of {mib(self.disk_size)}")
            )
        rows += [
            ("sent / size", f"{self.sent_factor:.2f}x"),
            ("max throttle", f"{self.max_throttle}%"),
            ("ended by", self.ended_by + (f": {self.reason}" if self.reason else "")),
        ]
        if self.source_running is not None and not self.completed:
            rows.append(("source", "running" if self.source_running else "NOT running"))
        if self.destination_running is not None and self.completed:
            state = "running" if self.destination_running else "NOT running"
            rows.append(("destination", state))
        return rows

    def table(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
