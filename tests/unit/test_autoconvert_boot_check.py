"""`ferry serve --check-boot`: the conversion child gets `--check-boot`,
and the boot check's result joins the session's conversion status. A check
that fails leaves the session converted (the conversion was committed);
a conversion that fails before any check stays failed.

The child here is a short script in place of `ferry convert` that writes
what a real one writes (conversion.json, boot-check.json in BootCheck's
own format) and says what it says; the real child, a real check and a
real `ferry serve` are proved end to end in tests/e2e/test_live_p2v_boots.py.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest

from converters import boot_check
from converters.wire import autoconvert

CHILD = """
import json, sys, time
from pathlib import Path
from converters import boot_check
session = Path(sys.argv[-1])
(session / "argv.json").write_text(json.dumps(sys.argv[1:]))
outcome = (session / "outcome").read_text()
print("== fixups", file=sys.stderr, flush=True)
if outcome == "conversion fails":
    print("ferry convert: cannot convert: injected", file=sys.stderr)
    sys.exit(1)
(session / "conversion.json").write_text("{}")
print(session / "vm.xml", flush=True)
print("== boot check: vm in a throwaway overlay", file=sys.stderr, flush=True)
booted = outcome == "boots"
check = boot_check.BootCheck(
    "boots" if booted else "stopped", "userspace" if booted else "initramfs",
    81.0, "tcg", ("ALERT!  /dev/sda1 does not exist.",),
    "reached userspace" if booted else "in the initramfs waiting for the root disk",
)
boot_check.save(check, session)
if not booted:
    print("ferry convert: converted, but the boot check failed: ...", file=sys.stderr)
    sys.exit(1)
"""


def session_with(tmp_path, outcome: str):
    session = tmp_path / "web01"
    session.mkdir()
    (session / "inventory.json").write_text(json.dumps({"disks": [{"name": "sda"}]}))
    (session / "outcome").write_text(outcome)
    return session


def convert(session, caplog) -> autoconvert.ConvertStatus:
    worker = autoconvert.AutoConvert([sys.executable, "-c", CHILD], check_boot=True)
    try:
        with caplog.at_level(logging.INFO, logger="converters.wire.autoconvert"):
            assert worker.submit(session)
            status = autoconvert.wait(session, 60, interval=0.2)
    finally:
        worker.stop()
    assert json.loads((session / "argv.json").read_text()) == [
        "--check-boot",
        str(session),
    ]
    return status


def test_a_boot_check_that_boots_is_in_the_status_and_the_log(tmp_path, caplog):
    session = session_with(tmp_path, "boots")
    status = convert(session, caplog)
    assert status.state == "converted" and status.domain_xml.endswith("vm.xml")
    assert status.boot_check["result"] == "boots"
    assert status.boot_check["summary"] == "boots, userspace after 81 s (tcg)"
    assert status.to_json()["boot_check"] == status.boot_check
    assert "CONVERT boot-check session=web01 result=boots stage=userspace" in (
        caplog.text
    )


def test_a_failed_boot_check_leaves_the_session_converted_and_says_where(
    tmp_path, caplog
):
    session = session_with(tmp_path, "stops in the initramfs")
    status = convert(session, caplog)
    assert status.state == "converted" and not status.error
    assert (status.boot_check["result"], status.boot_check["stage"]) == (
        "stopped",
        "initramfs",
    )
    line = next(r for r in caplog.records if "CONVERT boot-check" in r.message)
    assert line.levelno == logging.WARNING
    assert "result=stopped stage=initramfs seconds=81 accel=tcg" in line.message
    assert "waiting for the root disk" in line.message


def test_a_conversion_that_fails_before_its_check_stays_failed(tmp_path, caplog):
    session = session_with(tmp_path, "conversion fails")
    # a check from an earlier run is not this conversion's
    boot_check.save(
        boot_check.BootCheck("boots", "userspace", 1.0, "tcg", at=1.0), session
    )
    status = convert(session, caplog)
    assert status.state == "failed" and status.error == "cannot convert: injected"
    assert status.boot_check is None


@pytest.mark.parametrize("flag", [[], ["--check-boot-timeout", "120.0"]])
def test_serve_passes_its_boot_check_setting_to_the_conversion(flag):
    timeout = float(flag[1]) if flag else None
    worker = autoconvert.AutoConvert(
        ["ferry", "convert"], check_boot=True, check_boot_timeout=timeout
    )
    worker.stop()
    assert worker.command == ["ferry", "convert", "--check-boot", *flag]
    plain = autoconvert.AutoConvert(["ferry", "convert"])
    plain.stop()
    assert plain.command == ["ferry", "convert"]
