"""The app in a real terminal: tmux at 80x25 with TERM=linux (the VGA
console), driven by send-keys and read back with capture-pane."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.tui.conftest import REPO

pytestmark = pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux")


class Tmux:
    """One tmux server on its own socket (a file in the test's tmpdir, so
    that nothing is left behind), ended with kill-server."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "tui")

    def wait_for(self, *texts: str, line: str = "", timeout: float = 60.0) -> str:
        """The screen once it shows all ``texts`` (and a line matching the
        regular expression ``line``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            matches = not line or re.search(line, shown, re.MULTILINE)
            if matches and all(t in shown for t in texts):
                return shown
            time.sleep(0.05)
        raise AssertionError(f"{texts} {line!r} not on the screen:\n{self.screen()}")

    def settled(self, quiet: float = 0.5, timeout: float = 30.0) -> str:
        """The screen once it stopped changing: capture-pane can catch a
        frame half written."""
        deadline = time.monotonic() + timeout
        last, since = self.screen(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.screen()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now
        raise AssertionError(f"the screen keeps changing:\n{last}")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "tui", *keys)

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False
        )


@pytest.fixture
def tmux(tmp_path):
    t = Tmux(str(tmp_path / "tmux.sock"))
    yield t
    t.close()


def test_the_console_shows_progress_and_the_disk_list_at_80x25_on_term_linux(
    tmux, serve, pairing, loop_disks
):
    disk = loop_disks("tmux", size_mib=160, fill_mib=120)
    keys = " ".join(
        [
            "ferry.mode=p2v",
            pairing.kernel_keys(),
            f"ferry.disks={disk.name}",
            "ferry.name=tmux-vm",
        ]
    )
    command = (
        f"cd {shlex.quote(str(REPO))} && exec env TERM=linux "
        f"{shlex.quote(sys.executable)} -m tui.command --loop --keys "
        f"{shlex.quote(keys)}"
    )
    tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "25", command)
    tmux("set-option", "-t", "tui", "remain-on-exit", "on")

    # The progress screen: hold the server still once the disk's bar is up,
    # so that the picture is read while the transfer is under way.
    bar = rf"^ *{disk.name} .* \d+% .* of .*MiB"
    tmux.wait_for("P2V capture to 127.0.0.1", line=bar)
    os.kill(serve.proc.pid, signal.SIGSTOP)
    try:
        shown = tmux.settled()
        lines = shown.splitlines()
        assert len(lines) <= 25 and all(len(line) <= 80 for line in lines)
        assert "Step: " in shown and "Log" in shown and "c Cancel" in shown, shown
        assert re.search(bar, shown, re.MULTILINE), shown
    finally:
        os.kill(serve.proc.pid, signal.SIGCONT)

    tmux.wait_for("DONE: Capture complete", timeout=180)
    # From the done screen to the disk list, as a technician would.
    tmux.keys("m")
    tmux.wait_for("This machine", "Disks")
    tmux.keys("d")
    shown = tmux.wait_for("Selected disk", disk.name)
    row = next(line for line in shown.splitlines() if f" {disk.name} " in line)
    assert "loop" in row and "MiB" in row, shown
    # Escape then q at once would arrive as Alt+q: wait as a person would.
    tmux.keys("Escape")
    tmux.wait_for("Checks (ferry doctor")
    tmux.keys("q")
    tmux.wait_for("Quit ferry?")
    tmux.keys("y")
    dead = tmux("display-message", "-p", "-t", "tui", "#{pane_dead}")
    deadline = time.monotonic() + 30
    while dead.strip() != "1" and time.monotonic() < deadline:
        time.sleep(0.1)
        dead = tmux("display-message", "-p", "-t", "tui", "#{pane_dead}")
    assert dead.strip() == "1", tmux.screen()
