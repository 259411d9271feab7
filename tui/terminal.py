"""Keep the engines' child processes off the screen.

partclone, losetup, dumpe2fs and friends inherit the terminal as their
stderr; a line from one of them scrolls the screen Textual drew, and
Textual, which redraws only what changed, leaves it scrolled. While the app
runs, descriptor 2 points at a log file and Textual draws through a
descriptor of its own to the terminal (it writes to sys.__stderr__).
Descriptor 1 stays the terminal: Textual reads the window size from it.

$LINES and $COLUMNS win over the real size in shutil.get_terminal_size,
which Textual uses: stale values (a shell that exported them, a test
runner) would make it draw on part of the screen. The real size is what
counts.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

# The live environment keeps its run-time state here (inventory reads the
# boot device from it); elsewhere a temporary file will do.
RUN_DIR = Path("/run/ferry")


def log_path() -> Path:
    if RUN_DIR.is_dir() and os.access(RUN_DIR, os.W_OK):
        return RUN_DIR / "tui-children.log"
    return Path(tempfile.gettempdir()) / f"ferry-tui-children-{os.getpid()}.log"


def forget_size_variables(environ=os.environ) -> None:
    environ.pop("LINES", None)
    environ.pop("COLUMNS", None)


@contextlib.contextmanager
def children_to_log(path: Path | None = None):
    """Inside: fd 2 goes to ``path``; sys.__stderr__ and sys.stderr still
    reach the terminal."""
    path = path or log_path()
    saved = {2: os.dup(2)}
    old = sys.__stderr__, sys.stderr
    terminal = io.TextIOWrapper(
        io.FileIO(os.dup(2), "w"),
        encoding=sys.__stderr__.encoding or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log, 2)
        sys.__stderr__ = sys.stderr = terminal
        yield path
    finally:
        sys.__stderr__, sys.stderr = old
        terminal.close()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log)
