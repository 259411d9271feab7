"""The V2P flow through its confirmation into converters.deploy, against
loop devices with ext4 and real image files; refusals leave every disk as
it was."""

from __future__ import annotations

import subprocess

from textual import events
from textual.widgets import Input, Select

from tests.tui.conftest import loaded, make_image, screen_name, wait_for
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


def image_with_files(tmp_path, size_mib: int = 48):
    """A qcow2 with an MBR and ext4 labelled web01 holding files (and no
    operating system)."""
    raw = make_image(tmp_path / "web01.raw", size_mib, 8, partitioned=True)
    image = tmp_path / "web01.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", str(raw), str(image)], check=True
    )
    raw.unlink()
    return image


def ext4_label(dev: str, offset: int = 1 << 20) -> bytes:
    """The volume name in the ext4 superblock of the partition at offset."""
    with open(dev, "rb") as f:
        f.seek(offset + 1024 + 0x78)
        return f.read(16).rstrip(b"\0")


async def test_v2p_confirmation_needs_the_disk_name_then_deploy_writes_the_image(
    loop_disks, tmp_path
):
    target = loop_disks("target", size_mib=64, fill_mib=2)
    image = image_with_files(tmp_path)
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
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
            pilot, lambda: isinstance(app.screen, DoneScreen) and app.screen, 180
        )
    # converters.deploy wrote the image and read it back; the image holds
    # no operating system, so making it boot here is what fails, and the
    # sentence says the disk was written.
    print(done.outcome.sentence)
    assert ext4_label(target.dev) == b"web01"
    assert "written and verified" in done.outcome.sentence, done.outcome
    assert any("verified by read-back" in line for line in app.log_lines)


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
