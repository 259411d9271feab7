"""What a deploy has written so far, so that ``ferry deploy`` run again
after it was killed (or crashed) sends only the rest.

One text file per target under ``/run/ferry/deploy``: a JSON header naming
the image and the target, then one line per chunk written: ``D OFFSET
LENGTH ALG:HEX`` for data (deploy_write's checksum), ``Z OFFSET LENGTH``
for zeroed ranges. Data lines keep their digest: a resumed deploy still
reads back and checks every chunk, old or new, before it writes the
partition tables.

/run is the live environment's RAM: the journal outlives the process, not
a reboot, which is right, since a machine that rebooted may have had its
disk touched. Lines are flushed, not fsync'd, for the same reason: the
target's O_DIRECT writes reach the device before their line is written,
and only a power cut (which also loses /run) could undo them.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

RUN_DIR = Path("/run/ferry/deploy")


class DeployJournal:
    def __init__(self, path: Path, identity: dict) -> None:
        self.path = Path(path)
        self.identity = identity
        self.data: dict[int, tuple[int, str]] = {}  # offset -> (length, digest)
        self.zeroed: dict[int, int] = {}  # offset -> length
        self._lock = threading.Lock()  # workers append from their threads
        self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data or self.zeroed)
        self._file = open(self.path, "w" if fresh else "a")  # noqa: SIM115
        if fresh:
            self._file.write(json.dumps(identity, sort_keys=True) + "\n")
            self._file.flush()

    @classmethod
    def for_target(cls, target: str, identity: dict) -> DeployJournal:
        name = os.path.basename(os.path.realpath(target))
        return cls(RUN_DIR / f"{name}.journal", identity)

    @property
    def resumed_bytes(self) -> int:
        return sum(n for n, _ in self.data.values()) + sum(self.zeroed.values())

    def _load(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        if not lines or _header(lines[0]) != self.identity:
            return  # another image or disk: start over
        for line in lines[1:]:
            parts = line.split()
            try:
                if parts[0] == "D" and len(parts) == 4 and ":" in parts[3]:
                    self.data[int(parts[1])] = (int(parts[2]), parts[3])
                elif parts[0] == "Z" and len(parts) == 3:
                    self.zeroed[int(parts[1])] = int(parts[2])
            except (IndexError, ValueError):
                break  # a torn last line: what came before is good

    def has_data(self, offset: int, length: int) -> str | None:
        found = self.data.get(offset)
        return found[1] if found and found[0] == length else None

    def has_zero(self, offset: int, length: int) -> bool:
        return self.zeroed.get(offset) == length

    def wrote(self, offset: int, length: int, digest: str) -> None:
        self._append(f"D {offset} {length} {digest}\n")

    def zero(self, offset: int, length: int) -> None:
        self._append(f"Z {offset} {length}\n")

    def _append(self, line: str) -> None:
        with self._lock:
            self._file.write(line)
            self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self, done: bool = False) -> None:
        self._file.close()
        if done:
            self.path.unlink(missing_ok=True)


def _header(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:
        return None
