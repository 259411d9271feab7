"""The seed's "limit the writer" rule for a live disk: cgroup v2 ``io.max``
on a cgroup the user names (the service that writes), for the captured
disks, while the capture runs. The limit starts at ``--writer-limit`` and
tightens by the pre-copy policy's throttle steps when the dirty set stops
shrinking; it is lifted when the capture ends, however it ends (a SIGKILL
leaves it: ``ferry capture --live`` run again, or ``echo "MAJ:MIN
wbps=max" > io.max``, lifts it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class LimitError(Exception):
    """The writer cannot be limited as asked; one line for the user."""


def io_max_lines(devnos: list[tuple[int, int]], wbps: int | None) -> list[str]:
    """``io.max`` lines for the disks; None lifts the limit."""
    value = "max" if wbps is None else str(max(1, int(wbps)))
    return [f"{a}:{b} wbps={value}" for a, b in devnos]


@dataclass
class WriterLimit:
    cgroup: str  # a path under /sys/fs/cgroup, or absolute
    devnos: list[tuple[int, int]]
    base: float  # bytes per second at throttle 0
    current: int | None = None

    @property
    def path(self) -> Path:
        p = Path(self.cgroup)
        return p if p.is_absolute() else CGROUP_ROOT / p

    def check(self) -> None:
        io_max = self.path / "io.max"
        if not self.path.is_dir():
            raise LimitError(f"no cgroup {self.path}")
        if not io_max.exists():
            raise LimitError(
                f"{self.path} has no io.max: enable the io controller in its "
                "parent's cgroup.subtree_control (cgroup v2)"
            )

    def apply(self, throttle: int = 0) -> None:
        """Limit to ``base`` less ``throttle`` percent."""
        self.current = int(self.base * (100 - throttle) / 100)
        self._write(self.current)

    def lift(self) -> None:
        if self.current is not None:
            self._write(None)
            self.current = None

    def _write(self, wbps: int | None) -> None:
        io_max = self.path / "io.max"
        try:
            for line in io_max_lines(self.devnos, wbps):
                io_max.write_text(line + "\n")
        except OSError as e:
            raise LimitError(f"cannot write {io_max}: {e.strerror}") from e
