"""Every screen at 80x25, the VGA console's size, against committed SVG
baselines (pytest --snapshot-update rewrites them after a deliberate
change). The machine is described by hand (tests/tui/fixed.py) so that the
pictures are the same on every host; one of them uses the 16-colour theme
that TERM=linux gets."""

from __future__ import annotations

from textual import events
from textual.widgets import Input

from tests.tui import fixed
from tests.tui.conftest import wait_for
from tui.app import create_app
from tui.flows import Outcome
from tui.messages import ImagesListed

SIZE = (80, 25)


async def steady(pilot) -> None:
    """A blinking cursor is on or off depending on the millisecond the
    picture is taken: hold it on."""
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def shot(snap_compare, run, ansi: bool = False) -> bool:
    async def run_before(pilot):
        await run(pilot)
        await steady(pilot)

    return snap_compare(app(ansi), terminal_size=SIZE, run_before=run_before)


def app(ansi: bool = False):
    return create_app(probe=fixed.probe(), ansi=ansi)


async def ready(pilot) -> None:
    a = pilot.app
    await wait_for(pilot, lambda: a.machine is not None and a.checks is not None)
    await pilot.pause()


async def paste(pilot, selector: str, text: str) -> None:
    field = pilot.app.screen.query_one(selector)
    field.focus()
    field.post_message(events.Paste(text))
    await pilot.pause()


def test_machine(snap_compare):
    assert shot(snap_compare, ready)


def test_disks_with_the_boot_medium_under_the_cursor(snap_compare):
    async def run(pilot):
        await ready(pilot)
        await pilot.press("d", "down", "down")
        await wait_for(pilot, lambda: "sdb1" in pilot.app.screen.used)
        await pilot.pause()

    assert shot(snap_compare, run)


def test_network(snap_compare):
    async def run(pilot):
        await ready(pilot)
        await pilot.press("n")

    assert shot(snap_compare, run)


def test_p2v_form(snap_compare):
    async def run(pilot):
        await ready(pilot)
        await pilot.press("p")
        await paste(pilot, "#pairing", fixed.PAIRING)

    assert shot(snap_compare, run)


def test_p2v_form_with_a_problem(snap_compare):
    async def run(pilot):
        await ready(pilot)
        await pilot.press("p")
        await paste(pilot, "#pairing", "10.0.0.5:7420")
        await pilot.press("ctrl+g")

    assert shot(snap_compare, run)


async def open_v2p(pilot) -> None:
    await ready(pilot)
    await pilot.press("v")
    await paste(pilot, "#file", fixed.IMAGE.source)
    pilot.app.screen.post_message(ImagesListed([fixed.IMAGE]))
    await wait_for(pilot, lambda: pilot.app.screen.query("#target-1"))
    await pilot.pause()
    pilot.app.screen.query_one("#target-0").value = "sda"
    pilot.app.screen.query_one("#target-1").value = "nvme0n1"
    await pilot.pause()


def test_v2p_mapping(snap_compare):
    assert shot(snap_compare, open_v2p)


def test_v2p_confirmation(snap_compare):
    async def run(pilot):
        await open_v2p(pilot)
        await pilot.press("ctrl+g")
        await pilot.press(*"sda", "enter", *"wrong", "enter")

    assert shot(snap_compare, run)


async def scripted(pilot, lost_link: bool = False) -> None:
    await ready(pilot)
    flow = fixed.ScriptedFlow(lost_link)
    pilot.app.run_flow(flow)
    await wait_for(pilot, flow.emitted.is_set)
    await wait_for(pilot, lambda: len(pilot.app.screen.query("DiskProgress")) == 2)
    await pilot.pause(0.2)


def test_p2v_progress(snap_compare):
    assert shot(snap_compare, scripted)


def test_p2v_progress_reconnecting_in_16_colours(snap_compare):
    async def run(pilot):
        await scripted(pilot, lost_link=True)

    assert shot(snap_compare, run, ansi=True)


def test_cancel_asks_first(snap_compare):
    async def run(pilot):
        await scripted(pilot)
        await pilot.press("c")

    assert shot(snap_compare, run)


DONE = Outcome(
    True,
    "Capture complete",
    "Captured sda, nvme0n1 into session web01 on 10.0.0.5:7420 in 41:07.",
    where="VM web01 on the KVM host 10.0.0.5:7420",
)
FAILED = Outcome(
    False,
    "Capture failed",
    "The server at 10.0.0.5:7420 refused the secret in the pairing string: "
    "copy the pairing string that ferry serve prints again. Nothing was sent "
    "or written.",
    where="nothing was written on the server",
    retry=fixed.ScriptedFlow(),
)


def outcome(o: Outcome):
    async def run(pilot):
        await ready(pilot)
        pilot.app.record("== P2V capture to 10.0.0.5:7420, VM web01")
        pilot.app.record("== connect: 10.0.0.5:7420")
        pilot.app.show_outcome(o)
        await pilot.pause()

    return run


def test_done(snap_compare):
    assert shot(snap_compare, outcome(DONE))


def test_failed(snap_compare):
    assert shot(snap_compare, outcome(FAILED))


def test_save_logs(snap_compare):
    async def run(pilot):
        await outcome(DONE)(pilot)
        await pilot.press("l")

    assert shot(snap_compare, run)


def test_quit_asks_first(snap_compare):
    async def run(pilot):
        await ready(pilot)
        await pilot.press("q")

    assert shot(snap_compare, run)
