"""The V2P flow up to its confirmation, against loop devices with ext4 and
real image files. converters.deploy does not exist yet: starting must say
so and leave every disk as it was."""

from __future__ import annotations

import subprocess

from textual import events
from textual.widgets import Input, Select

from tests.tui.conftest import loaded, screen_name, wait_for
from tui.app import create_app
from tui.screens.done import DoneScreen

SIZE = (80, 25)
FAKE_PAIRING = "ferry://127.0.0.1:9/?fp=" + "0" * 64 + "&token=" + "t" * 24


def qcow2(path, size: str):
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True
    )
    return path


async def paste(pilot, selector: str, text: str) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    field.post_message(events.Paste(text))
    await pilot.pause()


async def open_image(pilot, target: str, image) -> None:
    await loaded(pilot, target)
    await pilot.press("v")
    assert screen_name(pilot.app) == "V2PScreen"
    await paste(pilot, "#file", str(image))
    await pilot.press("ctrl+o")
    await wait_for(pilot, lambda: pilot.app.screen.query("#target-0"), 30, "image")
    await pilot.pause()  # let the new Select compose before it is set
    pilot.app.screen.query_one("#target-0", Select).value = target
    await pilot.pause()


async def test_v2p_confirmation_needs_the_disk_name_and_start_writes_nothing(
    loop_disks, tmp_path
):
    target = loop_disks("target", size_mib=64, fill_mib=2)
    before = target.sha256()
    image = qcow2(tmp_path / "web01.qcow2", "48M")
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, target.name)
        await pilot.press("v")
        # The server's image list needs converters.deploy: said, not faked.
        await paste(pilot, "#pairing", FAKE_PAIRING)
        await pilot.press("ctrl+l")
        problem = app.screen.query_one("#problem")
        await wait_for(pilot, lambda: "not available" in str(problem.render()))
        await pilot.press("escape")

        await open_image(pilot, target.name, image)
        fit = str(app.screen.query_one("#fit-0").render())
        assert fit.startswith("fits, 16.0 MiB to spare"), fit

        await pilot.press("ctrl+g")
        assert screen_name(app) == "EraseModal"
        await pilot.press(*"sda", "enter")
        mismatch = str(app.screen.query_one("#mismatch").render())
        assert f"does not name {target.name}" in mismatch
        assert screen_name(app) == "EraseModal"

        await pilot.press("home", "ctrl+k", *target.name, "enter")
        done = await wait_for(
            pilot, lambda: isinstance(app.screen, DoneScreen) and app.screen
        )
        assert not done.outcome.ok
        assert "V2P deploy is not available in this build" in done.outcome.sentence
        assert f"nothing was written to {target.name}" in done.outcome.sentence
    assert target.sha256() == before


async def test_a_disk_too_small_for_the_image_gets_the_error_screen(
    loop_disks, tmp_path
):
    target = loop_disks("small", size_mib=32, fill_mib=1)
    before = target.sha256()
    image = qcow2(tmp_path / "big.qcow2", "128M")
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await open_image(pilot, target.name, image)
        assert "TOO SMALL by 96.0 MiB" in str(app.screen.query_one("#fit-0").render())
        await pilot.press("ctrl+g")
        done = await wait_for(
            pilot, lambda: isinstance(app.screen, DoneScreen) and app.screen
        )
        assert done.outcome.title == "Cannot deploy"
        assert (
            f"{target.name} is too small for image disk big: it holds 32.0 MiB, "
            "the image needs 128.0 MiB." in done.outcome.sentence
        )
        assert "Nothing was written." in done.outcome.sentence
        await pilot.press("escape")  # back to choose another disk
        assert screen_name(app) == "V2PScreen"
    assert target.sha256() == before


async def test_cancelling_the_confirmation_writes_nothing(loop_disks, tmp_path):
    target = loop_disks("keep", size_mib=64, fill_mib=1)
    before = target.sha256()
    image = qcow2(tmp_path / "web01.qcow2", "32M")
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await open_image(pilot, target.name, image)
        await pilot.press("ctrl+g")
        assert screen_name(app) == "EraseModal"
        await pilot.press("escape")
        assert screen_name(app) == "V2PScreen"
        assert "Not confirmed" in str(app.screen.query_one("#problem").render())
    assert target.sha256() == before
