"""The network screen's connection test against a real ferry serve, and
saving the session's log onto a disk (a loop device standing in for the
USB stick)."""

from __future__ import annotations

import subprocess

from textual import events

from tests.tui.conftest import loaded, screen_name, sessions, wait_for
from tui.app import create_app
from tui.screens.done import DoneScreen

SIZE = (80, 25)


async def connection_test(pilot, text: str) -> str:
    await pilot.press("n")
    assert screen_name(pilot.app) == "NetworkScreen"
    field = pilot.app.screen.query_one("#pairing")
    field.post_message(events.Paste(text))
    await pilot.pause()
    await pilot.press("ctrl+t")
    status = pilot.app.screen.query_one(".status")
    await wait_for(pilot, lambda: "testing" not in str(status.render()), 30)
    return str(status.render())


async def test_the_network_screen_tests_the_server_and_shows_its_fingerprint(
    serve, pairing
):
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        shown = await connection_test(pilot, str(pairing))
    assert shown.startswith("OK: ferry serve 0.1.0 at 127.0.0.1")
    fp = pairing.fingerprint
    assert f"certificate {fp[:8]} {fp[8:16]} {fp[16:24]} {fp[24:32]}" in shown
    assert sessions(serve.storage) == []  # a test writes nothing


async def test_the_network_screen_says_when_the_secret_is_wrong(serve, pairing):
    wrong = str(pairing).replace(pairing.secret, "y" * len(pairing.secret))
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        shown = await connection_test(pilot, wrong)
    assert "refused the secret" in shown


async def test_the_log_is_saved_onto_a_stick(serve, pairing, loop_disks):
    from tests.integration.test_wire_support import free_port

    stick = loop_disks("stick", size_mib=32, fill_mib=0)
    nowhere = str(pairing).replace(f":{pairing.port}/", f":{free_port()}/")
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, stick.name)
        await pilot.press("p")
        app.screen.query_one("#pairing").post_message(events.Paste(nowhere))
        app.screen.query_one("#disks").deselect_all()
        app.screen.query_one("#disks").select(stick.name)
        await pilot.pause()
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, DoneScreen))
        await pilot.press("l")
        assert screen_name(app) == "SaveLogsModal"
        choices = app.screen.query_one("ChoiceList")
        index = next(
            i
            for i in range(choices.option_count)
            if choices.get_option_at_index(i).id == stick.dev
        )
        choices.highlighted = index
        await pilot.press("enter")
        status = app.screen.query_one("#status")
        await wait_for(pilot, lambda: "Saved as" in str(status.render()), 60)
        saved = str(status.render())
    name = saved.split(":/", 1)[1].rstrip(".")
    listing = subprocess.run(
        ["debugfs", "-R", f"cat /{name}", stick.dev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Cannot reach the server" in listing
    assert "== P2V capture to 127.0.0.1" in listing


async def test_a_bad_static_address_is_refused_and_dhcp_goes_to_the_engine():
    from converters.network_config import dhcp
    from tests.tui import fixed

    probe = fixed.probe()
    app = create_app(probe=probe)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.machine is not None)
        await pilot.press("n", "tab", *"10.0.0.15", "ctrl+g")
        status = app.screen.query_one("#net-status")
        shown = str(status.render())
        assert shown == (
            "eno1: address '10.0.0.15' needs a prefix length, e.g. "
            "192.168.1.20/24; nothing was changed."
        )
        assert probe.configured == []
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "configured" in str(status.render()))
    assert probe.configured == [dhcp("eno1")]
