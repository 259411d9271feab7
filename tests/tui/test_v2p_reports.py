"""The V2P Done screen of a deploy whose first-boot report is armed says
where the machine will report, and `p` shows the server's reports of the
image: a real ferry serve on loopback holding two expected machines of
the image, one of which reported, and a machine of another image."""

from __future__ import annotations

import dataclasses

from converters import deploy_report
from converters.deploy import DeployResult
from converters.deploy_fixups import FixupReport
from converters.deploy_plan import DeployPlan
from converters.first_boot_report import Armed
from converters.wire.connection import WireClient
from converters.wire.report_types import report_path
from tests.tui import fixed
from tests.tui.conftest import screen_name, wait_for
from tui.app import create_app
from tui.flows import deployed
from tui.screens.done import DoneScreen

SIZE = (80, 25)
MAC1, MAC2 = "52:54:00:fe:07:01", "52:54:00:fe:07:02"


def result(armed: Armed | None) -> DeployResult:
    return DeployResult(DeployPlan(), fixups=FixupReport(first_boot=armed))


def report(pairing, cred, **fields) -> None:
    body = {
        "hostname": "lab-525400fe0701",
        "nic": "ens3",
        "mac": MAC1,
        "addr": "10.0.2.15",
        "boot_seconds": 23.4,
    }
    client = WireClient(dataclasses.replace(pairing, secret=cred.secret))
    try:
        client.request_json("POST", report_path(cred.report_id), {**body, **fields})
    finally:
        client.close()


async def test_the_done_screen_says_the_report_is_armed_and_lists_the_images_reports(
    pairing,
):
    up = deploy_report.register(pairing, "lab-525400fe0701", "lab-img", (MAC1,))
    deploy_report.register(pairing, "lab-525400fe0702", "lab-img", (MAC2,))
    deploy_report.register(pairing, "other-1", "other-img")
    report(pairing, up)
    armed = Armed(up.report_id, pairing.address, "curl", "lab-525400fe0701")
    outcome = deployed(
        "Wrote image lab-img to sda.", "sda", result(armed), str(pairing), "lab-img"
    )
    app = create_app(probe=fixed.probe())
    async with app.run_test(size=SIZE) as pilot:
        app.show_outcome(outcome)
        await pilot.pause()
        sentence = str(app.screen.query_one("#sentence").render())
        assert (
            f"lab-525400fe0701 will report to ferry serve at {pairing.address}"
            in " ".join(sentence.split())
        )
        await pilot.press("p")
        assert screen_name(app) == "ReportsScreen"
        summary = await wait_for(
            pilot,
            lambda: (
                "reported" in str(app.screen.query_one("#summary").render())
                and str(app.screen.query_one("#summary").render())
            ),
            30,
            "the server's reports",
        )
        assert summary == "1 of 2 machines reported up"
        slots = str(app.screen.query_one("#slots").render())
        assert "lab-525400fe0701     UP at" in slots
        assert f"ens3 {MAC1} 10.0.2.15, 23 s after boot" in slots
        assert "lab-525400fe0702     waiting since" in slots
        assert "other-1" not in slots
        await pilot.press("escape")
        assert isinstance(app.screen, DoneScreen)


async def test_a_deploy_without_a_report_offers_no_reports_view():
    outcome = deployed(
        "Wrote image web01 to sda.",
        "sda",
        result(None),
        "/media/usb/web01.qcow2",
        "web01",
    )
    assert outcome.reports is None and "report" not in outcome.sentence
    app = create_app(probe=fixed.probe())
    async with app.run_test(size=SIZE) as pilot:
        app.show_outcome(outcome)
        await pilot.pause()
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, DoneScreen)
