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


def served_image(serve, pairing, tmp_path, name: str = "web01"):
    """A machine image on ferry serve: an MBR disk with ext4 labelled web01
    (and no operating system), uploaded as a capture session."""
    from converters.extents import Extent, ExtentKind, ExtentMap
    from converters.wire.client import DiskSource, upload
    from tests.tui.conftest import make_image

    raw = make_image(tmp_path / f"{name}.raw", 48, 4, partitioned=True)
    size = raw.stat().st_size
    emap = ExtentMap(size, [Extent(0, size, ExtentKind.DATA)])
    upload(pairing, name, [DiskSource("sda", raw, emap)])
    return raw


def v2p_keys(pairing, target: str, **more: str) -> str:
    keys = {
        "ferry.mode": "v2p",
        "ferry.image": "web01",
        "ferry.target": target,
        "ferry.confirm": target,
        "ferry.hostname": "lab-{mac}",
    }
    keys.update({f"ferry.{k}": v for k, v in more.items()})
    words = [f"{k}={v}" for k, v in keys.items()]
    return " ".join([*words, pairing.kernel_keys()])


def run_plain(cmdline: str) -> str:
    import io

    from converters import kernel_cmdline, unattended

    out = io.StringIO()
    unattended.run(
        kernel_cmdline.parse(cmdline),
        unattended.Consoles([], stdout=out),
        do_power=lambda action, out: None,
    )
    return out.getvalue()


def test_unattended_v2p_writes_the_server_image_onto_the_named_disk(
    serve, pairing, loop_disks, tmp_path
):
    from tests.tui.test_v2p import ext4_label

    served_image(serve, pairing, tmp_path)
    target = loop_disks("v2p-target", size_mib=64, fill_mib=2)
    name = target.dev.removeprefix("/dev/")
    console = run_plain(v2p_keys(pairing, name))
    # The image was written and read back; it holds no operating system,
    # so making it boot on this machine is what fails, and the reason says
    # the disk was written.
    assert ext4_label(target.dev) == b"web01"
    assert "verified by read-back" in console, console
    assert "FERRY-UNATTENDED-FAILED mode=v2p" in console, console
    assert "written and verified" in console


def test_unattended_v2p_of_an_image_the_server_lacks_writes_nothing(
    serve, pairing, loop_disks, tmp_path
):
    served_image(serve, pairing, tmp_path)
    target = loop_disks("v2p-untouched", size_mib=64, fill_mib=2)
    before = target.image.read_bytes()
    name = target.dev.removeprefix("/dev/")
    console = run_plain(v2p_keys(pairing, name, image="web02"))
    assert (
        "reason=ferry serve at" in console
        and "offers no image web02 (it offers: web01): nothing was written" in console
    ), console
    assert target.image.read_bytes() == before


async def test_unattended_v2p_runs_on_the_screens(serve, pairing, loop_disks, tmp_path):
    from tests.tui.test_v2p import ext4_label

    served_image(serve, pairing, tmp_path)
    target = loop_disks("v2p-screens", size_mib=64, fill_mib=2)
    name = target.dev.removeprefix("/dev/")
    keys = dict(w.split("=", 1) for w in v2p_keys(pairing, name).split())
    app = create_app(include_loop=True, kernel=keys)
    screens = set()
    async with app.run_test(size=SIZE) as pilot:

        def watch():
            screens.add(type(app.screen).__name__)
            return isinstance(app.screen, DoneScreen) and app.screen

        done = await wait_for(pilot, watch, 180, "unattended V2P")
    assert ProgressScreen.__name__ in screens
    assert ext4_label(target.dev) == b"web01"
    # no operating system in the image: written, verified, then not bootable
    assert done.outcome.title == "Deploy failed", done.outcome
    assert "written and verified" in done.outcome.sentence, done.outcome
