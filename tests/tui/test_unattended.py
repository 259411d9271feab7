"""Unattended runs: ferry.* keys (as on the kernel command line) start the
flow on the same screens, or as plain lines where nothing can be drawn (the
live environment's runner, converters/unattended.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.tui.conftest import REPO, wait_for
from tui.app import create_app
from tui.screens.done import DoneScreen
from tui.screens.progress import ProgressScreen

SIZE = (80, 25)


def keys_for(pairing, disk: str, **more: str) -> dict[str, str]:
    keys = {"ferry.mode": "p2v", "ferry.disks": disk}
    keys.update(dict(kv.split("=", 1) for kv in pairing.kernel_keys().split()))
    keys.update({f"ferry.{k}": v for k, v in more.items()})
    return keys


def complete(serve, name: str) -> bool:
    saved = json.loads((serve.storage / name / "session.json").read_text())
    return all(d["complete"] for d in saved["disks"])


async def test_unattended_p2v_shows_progress_then_done(serve, pairing, loop_disks):
    disk = loop_disks("auto", size_mib=64, fill_mib=16)
    keys = keys_for(pairing, disk.name, name="auto-vm")
    app = create_app(include_loop=True, kernel=keys)
    screens = set()
    async with app.run_test(size=SIZE) as pilot:

        def watch():
            screens.add(type(app.screen).__name__)
            return isinstance(app.screen, DoneScreen)

        await wait_for(pilot, watch, 120, "unattended run")
        assert app.screen.outcome.ok, app.screen.outcome
    assert ProgressScreen.__name__ in screens
    assert complete(serve, "auto-vm")


async def test_unattended_post_action_runs_after_the_countdown(
    serve, pairing, loop_disks, monkeypatch
):
    import tui.screens.done

    monkeypatch.setattr(tui.screens.done, "POST_DELAY", 1)
    disk = loop_disks("post", size_mib=32, fill_mib=1)
    keys = keys_for(pairing, disk.name, name="post-vm", post="poweroff")
    app = create_app(include_loop=True, kernel=keys)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.return_value is not None, 120, "exit")
    assert app.return_value == "poweroff"  # carried out by tui/command.py


async def test_unattended_keys_that_do_not_make_a_flow_say_which_is_missing():
    app = create_app(kernel={"ferry.mode": "p2v", "ferry.disks": "all"})
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen))
        outcome = app.screen.outcome
    assert not outcome.ok
    assert "needs ferry.server=" in outcome.sentence


def test_without_a_terminal_the_unattended_run_prints_plain_lines(
    serve, pairing, loop_disks
):
    disk = loop_disks("plain", size_mib=32, fill_mib=2)
    keys = keys_for(pairing, disk.name, name="plain-vm")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tui.command",
            "--loop",
            "--keys",
            " ".join(f"{k}={v}" for k, v in keys.items()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "== send: session plain-vm" in run.stdout
    assert "FERRY-UNATTENDED-DONE mode=p2v session=plain-vm" in run.stdout
    assert complete(serve, "plain-vm")
