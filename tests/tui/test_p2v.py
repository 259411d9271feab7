"""The P2V flow through the screens, against real resources: loop devices
with ext4 as this machine's disks and a real ferry serve on loopback."""

from __future__ import annotations

import json
import os

import pytest
from textual import events
from textual.widgets import Input, SelectionList

from tests.integration.test_wire_support import Proxy
from tests.tui.conftest import loaded, screen_name, sessions, wait_for
from tui.app import create_app
from tui.screens.done import DoneScreen
from tui.screens.progress import ProgressScreen

SIZE = (80, 25)


async def fill_p2v(
    pilot, server: str, disks: list[str], name: str, typed: bool = False
) -> None:
    """Machine screen -> P2V screen, filled in as a technician would: the
    pairing string typed key by key (slow: 130 keys) or pasted, as a
    terminal with bracketed paste delivers it."""
    await loaded(pilot, *disks)
    await pilot.press("p")
    screen = pilot.app.screen
    assert screen_name(pilot.app) == "P2VScreen"
    pairing = screen.query_one("#pairing", Input)
    assert pairing.has_focus  # the first thing to fill in
    if typed:
        await pilot.press(*server)
    else:
        pairing.post_message(events.Paste(server))
        await pilot.pause()
    assert pairing.value == server
    picker = screen.query_one("#disks", SelectionList)
    # This host's own disks (and other tests' loop devices) are offered
    # too and chosen by default as fixed disks: keep only ours.
    picker.deselect_all()
    for disk in disks:
        picker.select(disk)
    screen.query_one("#name", Input).focus()
    await pilot.press("home", "ctrl+k", *name)


async def finished(pilot, timeout: float = 120.0) -> DoneScreen:
    await wait_for(
        pilot, lambda: isinstance(pilot.app.screen, DoneScreen), timeout, "done"
    )
    return pilot.app.screen


def record(serve, name: str) -> dict:
    return json.loads((serve.storage / name / "session.json").read_text())


async def test_p2v_captures_loop_disks_until_the_server_says_complete(
    serve, pairing, loop_disks
):
    sys_disk = loop_disks("sys", size_mib=64, fill_mib=12, partitioned=True)
    data = loop_disks("data", size_mib=48, fill_mib=6)
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await fill_p2v(
            pilot, str(pairing), [sys_disk.name, data.name], "tui-cap", typed=True
        )
        # The VM's size, defaulted from this machine, changed by hand.
        vcpus = app.screen.query_one("#vcpus", Input)
        assert vcpus.value == str(min(os.cpu_count(), 8))
        vcpus.focus()
        await pilot.press("home", "ctrl+k", "3", "tab", "home", "ctrl+k", *"1536M")
        await pilot.press("ctrl+t")
        status = pilot.app.screen.query_one(".status")
        await wait_for(pilot, lambda: "OK:" in str(status.render()), 30, "test")
        assert pairing.fingerprint[:8] in str(status.render())

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ProgressScreen))
        done = await finished(pilot)
        assert done.outcome.ok, done.outcome
        assert "tui-cap" in done.outcome.where
        assert str(pairing.port) in done.outcome.where

    saved = record(serve, "tui-cap")
    assert {d["name"] for d in saved["disks"]} == {sys_disk.name, data.name}
    assert all(d["complete"] for d in saved["disks"]), saved
    assert any("complete on" in line for line in app.log_lines)
    inventory = json.loads((serve.storage / "tui-cap" / "inventory.json").read_text())
    assert (inventory["cpus"], inventory["memory"]) == (3, 1536 << 20)


async def test_a_wrong_secret_shows_the_error_screen_and_writes_nothing(
    serve, pairing, loop_disks
):
    disk = loop_disks("one", size_mib=32, fill_mib=1)
    wrong = str(pairing).replace(pairing.secret, "x" * len(pairing.secret))
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await fill_p2v(pilot, wrong, [disk.name], "wrong-secret")
        await pilot.press("ctrl+g")
        done = await finished(pilot, 60)
        assert not done.outcome.ok
        sentence = done.outcome.sentence
        assert "refused the secret" in sentence and "Nothing was sent" in sentence
        # Back to the form to fix it: what was typed is still there.
        await pilot.press("escape")
        assert screen_name(app) == "P2VScreen"
    assert sessions(serve.storage) == []


async def test_an_unreachable_server_shows_the_error_screen_and_writes_nothing(
    serve, pairing, loop_disks
):
    from tests.integration.test_wire_support import free_port

    disk = loop_disks("one", size_mib=32, fill_mib=1)
    nowhere = str(pairing).replace(f":{pairing.port}/", f":{free_port()}/")
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await fill_p2v(pilot, nowhere, [disk.name], "unreachable")
        await pilot.press("ctrl+g")
        done = await finished(pilot, 60)
        assert not done.outcome.ok
        assert "Cannot reach the server" in done.outcome.sentence
        assert "connection refused" in done.outcome.sentence
        assert "Nothing was sent" in done.outcome.sentence
    assert sessions(serve.storage) == []


async def test_a_disk_mounted_read_write_is_refused_before_anything_is_sent(
    serve, pairing, loop_disks, tmp_path
):
    import subprocess

    disk = loop_disks("busy", size_mib=32, fill_mib=1)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", disk.dev, str(mnt)], check=True)
    try:
        app = create_app(include_loop=True)
        async with app.run_test(size=SIZE) as pilot:
            await fill_p2v(pilot, str(pairing), [disk.name], "busy")
            await pilot.press("ctrl+g")
            done = await finished(pilot, 60)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert "mounted read-write" in done.outcome.sentence
    assert "Nothing was sent" in done.outcome.sentence
    assert sessions(serve.storage) == []


async def test_cancel_asks_first_then_stops_and_retry_resumes_to_complete(
    serve, pairing, loop_disks
):
    from converters.wire.pairing import Pairing

    # More 8 MiB chunks (12) than senders (8), so that some are not yet
    # sent when the link stalls and the cancel has something to stop.
    disk = loop_disks("big", size_mib=128, fill_mib=96)
    # The link stalls once the capture is under way and stays stalled until
    # the cancel is confirmed: the capture cannot finish first, however fast
    # this host sends or however slowly the pilot presses keys (CI once saw
    # a 1 MiB/s link finish in 9 s before the cancel came).
    proxy = Proxy(pairing.port)
    proxy.hold_after = 4 << 20
    via = Pairing(pairing.host, proxy.port, pairing.fingerprint, pairing.secret)
    app = create_app(include_loop=True)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await fill_p2v(pilot, str(via), [disk.name], "stopped")
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: isinstance(app.screen, ProgressScreen))
            await wait_for(pilot, proxy.held.is_set, 60, "the stalled link")
            progress = app.screen
            await pilot.press("c")
            assert screen_name(app) == "ConfirmModal"
            await pilot.press("y")
            await wait_for(pilot, lambda: progress.flow.stop.is_set(), 10, "cancel")
            proxy.release()
            done = await finished(pilot)
            assert done.outcome.title == "Capture stopped", done.outcome
            assert "retry resumes" in done.outcome.sentence
            await pilot.press("r")  # retry resumes the same session
            done = await finished(pilot)
            assert done.outcome.ok, done.outcome
    finally:
        proxy.close()
    assert all(d["complete"] for d in record(serve, "stopped")["disks"])


@pytest.mark.timeout(300)
async def test_a_lost_link_shows_reconnecting_and_the_capture_resumes(
    serve, pairing, loop_disks
):
    from converters.wire.pairing import Pairing

    disk = loop_disks("link", size_mib=96, fill_mib=40)
    proxy = Proxy(pairing.port)
    proxy.cut_after = 12 << 20  # once, in the middle of the data
    via = Pairing(pairing.host, proxy.port, pairing.fingerprint, pairing.secret)
    seen = []
    app = create_app(include_loop=True)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await fill_p2v(pilot, str(via), [disk.name], "link")
            await pilot.press("ctrl+g")
            progress = await wait_for(
                pilot,
                lambda: isinstance(app.screen, ProgressScreen) and app.screen,
            )

            def watch():
                if progress.reconnecting:
                    seen.append(progress.query_one("#link").render())
                return isinstance(app.screen, DoneScreen)

            await wait_for(pilot, watch, 180, "done after the cut")
            done = app.screen
            assert done.outcome.ok, done.outcome
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert progress.reconnects >= 1
    assert seen and "reconnecting" in str(seen[0])
    assert all(d["complete"] for d in record(serve, "link")["disks"])


@pytest.mark.timeout(300)
async def test_cancel_while_the_link_is_down_stops_the_uploader_within_seconds(
    serve, pairing, loop_disks
):
    """The uploader would retry a dead link for ten minutes: the cancel
    signal must end its workers, not only the screen."""
    import threading
    import time

    from converters.wire.pairing import Pairing

    disk = loop_disks("dead", size_mib=96, fill_mib=40)
    proxy = Proxy(pairing.port)
    proxy.cut_after = 8 << 20
    # Down for good at the cut: a client reconnecting before the test could
    # close it would finish the 40 MiB (seen once the uploader read ahead).
    proxy.stay_down = True
    via = Pairing(pairing.host, proxy.port, pairing.fingerprint, pairing.secret)
    app = create_app(include_loop=True)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await fill_p2v(pilot, str(via), [disk.name], "dead")
            await pilot.press("ctrl+g")
            progress = await wait_for(
                pilot,
                lambda: isinstance(app.screen, ProgressScreen) and app.screen,
            )
            await wait_for(pilot, lambda: progress.reconnecting, 120, "link lost")
            link = str(progress.query_one("#link").render())
            await pilot.press("c", "y")
            asked = time.monotonic()
            done = await finished(pilot, 60)
            stopped_in = time.monotonic() - asked
            senders = [t for t in threading.enumerate() if "ferry-send" in t.name]
    finally:
        proxy.close()
    assert "reconnecting" in link
    assert done.outcome.title == "Capture stopped", done.outcome
    assert "retry resumes it" in done.outcome.sentence
    # The backoff sleeps at most 8 s between checks of the signal.
    assert stopped_in < 15, stopped_in
    print(f"stopped {stopped_in:.1f} s after the cancel was confirmed")
    assert senders == []
    assert not any(d["complete"] for d in record(serve, "dead")["disks"])


async def test_the_done_screen_shows_the_servers_conversion_and_boot_check(
    serve, pairing, loop_disks, monkeypatch
):
    """The Done screen of a capture asks the server about the session's
    conversion until it is final. This server does not convert
    (--no-convert), so the test writes the status files a conversion and
    its boot check leave (in their own formats) and the real server
    reports them over the wire."""
    from converters.boot_check import BootCheck, save
    from converters.wire.autoconvert import ConvertStatus, _write_status
    from tui.widgets import conversion

    monkeypatch.setattr(conversion, "REFRESH", 0.3)
    disk = loop_disks("conv", size_mib=32, fill_mib=2)
    app = create_app(include_loop=True)
    async with app.run_test(size=SIZE) as pilot:
        await fill_p2v(pilot, str(pairing), [disk.name], "tui-conv")
        await pilot.press("ctrl+g")
        done = await finished(pilot)
        assert done.outcome.ok, done.outcome
        line = done.query_one("#conversion")

        def shows(text: str):
            return lambda: text in str(line.render())

        await wait_for(pilot, shows("no conversion queued"), 30, "no conversion")
        session = serve.storage / "tui-conv"
        _write_status(session, ConvertStatus("converting", step="boot check: vm"))
        await wait_for(pilot, shows("boot check running"), 30, "check running")
        check = BootCheck("boots", "userspace", 74.0, "tcg", ("FERRY-BOOT-CHECK",))
        save(check, session)
        status = ConvertStatus("converted", started_at=100.0, finished_at=391.0)
        status.boot_check = check.to_json()
        _write_status(session, status)
        await wait_for(pilot, shows("boots, userspace after 74 s (tcg)"), 30, "check")
        text = str(line.render())
        assert text.startswith("Server: converted in 4:51; boot check: "), text
        assert not line.has_class("-failed")
        # final: no more questions to the server
        assert line._timer is None
