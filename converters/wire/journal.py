"""The receiver's journal: which ranges of a disk are durably written.

One text file per disk, ``DISK.journal``: a header line, then one
``OFFSET LENGTH`` line per committed range. A range is appended only after
the storage backend flushed it, and the append is fsync'd before anyone is
told, so after a crash or a power cut the journal never claims more than the
image holds. A torn last line (a crash during the append) is cut off when the
journal is opened again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from .ranges import RangeSet

log = logging.getLogger(__name__)

MAGIC = b"ferry-journal 1\n"

# Rewrite the file when it holds this many more lines than merged ranges:
# chunks line up, so a long transfer merges into a handful of ranges while
# its journal grows by one line per flush.
COMPACT_SLACK = 4096


class JournalError(Exception):
    pass


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._lines = 0

    def load(self) -> RangeSet:
        """The committed ranges; cuts a torn tail so appends stay parseable."""
        committed = RangeSet()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return committed
        if not raw.startswith(MAGIC):
            raise JournalError(f"{self.path} is not a ferry journal")
        good = raw.rfind(b"\n") + 1
        lines = raw[len(MAGIC) : good].splitlines()
        for number, line in enumerate(lines, start=2):
            try:
                offset, length = (int(x) for x in line.split())
            except ValueError as e:
                raise JournalError(f"{self.path}:{number}: bad line {line!r}") from e
            committed.add(offset, offset + length)
        self._lines = len(lines)
        if good < len(raw):
            log.warning("JOURNAL torn path=%s cut=%d", self.path, len(raw) - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        if self._lines > len(committed) + COMPACT_SLACK:
            self.compact(committed)
        return committed

    def append(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Record ``[start, end)`` ranges as committed, durably."""
        text = "".join(f"{s} {e - s}\n" for s, e in ranges if e > s)
        if not text:
            return
        fd = self._open()
        data = text.encode()
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError:
            # A full disk may take half a line: cut it, or the next append
            # would continue it into a line that means something else.
            os.ftruncate(fd, end)
            raise
        self._lines += text.count("\n")

    def compact(self, committed: RangeSet) -> None:
        """Replace the file by one line per merged range, atomically."""
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write("".join(f"{s} {e - s}\n" for s, e in committed).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        log.info(
            "JOURNAL compact path=%s lines=%d ranges=%d",
            self.path,
            self._lines,
            len(committed),
        )
        self._lines = len(committed)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                os.write(fd, MAGIC)
                os.fsync(fd)
                # The new name must survive a crash too.
                _fsync_dir(self.path.parent)
            self._fd = fd
        return self._fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
