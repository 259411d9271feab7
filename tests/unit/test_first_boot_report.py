"""The first-boot report's parts: the unit, the script and the credential
it installs, what the script removes, the image checks, the kernel key and
the wire types."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess

import pytest

from converters import first_boot_report as fbr
from converters import kernel_cmdline
from converters.deploy_report import spki_pin
from converters.events import EventStream, Log
from converters.wire.errors import BadRequest
from converters.wire.pairing import load_or_create_identity
from converters.wire.report_types import Registration, Report, SlotStatus
from tests.unit.fake_guest import FakeGuest

CRED = fbr.Credential(
    "10.0.2.2",
    7420,
    "0123456789abcdef",
    "s" * 43,
    "sha256//" + "A" * 43 + "=",
    "f" * 64,
)
PAIRING_TOKEN = "the-pairing-token-never-on-disk"


def guest_with(tmp_path, *tools: str) -> FakeGuest:
    guest = FakeGuest(
        tmp_path, commands={"chmod": _chmod(tmp_path), "ln": _ln(tmp_path)}
    )
    guest.put("/lib/systemd/systemd", "")
    guest.put("/etc/hostname", "vm-image\n")
    for tool in tools:
        guest.put(f"/usr/bin/{tool}", "")
    return guest


def _chmod(root):
    def run(argv):
        os.chmod(root / argv[2].lstrip("/"), int(argv[1], 8))
        return ""

    return run


def _ln(root):
    def run(argv):
        link = root / argv[-1].lstrip("/")
        link.unlink(missing_ok=True)
        os.symlink(argv[-2], link)
        return ""

    return run


def warnings(events_seen: list) -> list[str]:
    return [
        e.message for e in events_seen if isinstance(e, Log) and e.level == "warning"
    ]


def recording() -> tuple[EventStream, list]:
    events, seen = EventStream(), []
    events.subscribe(seen.append)
    return events, seen


def test_install_leaves_a_root_only_credential_the_script_and_an_enabled_unit(tmp_path):
    guest = guest_with(tmp_path, "curl")
    fbr.install(guest, CRED)
    conf = tmp_path / "etc/ferry/first-boot-report.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "etc/ferry").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / fbr.SCRIPT_PATH[1:]).stat().st_mode) == 0o755
    wants = tmp_path / fbr.WANTS_PATH[1:]
    assert os.readlink(wants) == fbr.UNIT_PATH
    text = conf.read_text()
    assert (
        f"FERRY_REPORT_URL='https://10.0.2.2:7420/v1/reports/{CRED.report_id}'" in text
    )
    assert f"FERRY_REPORT_SECRET='{CRED.secret}'" in text
    assert PAIRING_TOKEN not in text


def test_the_unit_waits_for_the_network_and_runs_only_with_its_credential():
    unit = fbr.UNIT_TEXT
    assert "Wants=network-online.target" in unit
    assert "After=network-online.target" in unit
    assert f"ConditionPathExists={fbr.CONF_PATH}" in unit
    assert f"ExecStart={fbr.SCRIPT_PATH}" in unit
    assert "WantedBy=multi-user.target" in unit
    # multi-user.target must not wait minutes for a server that is away
    assert "Type=simple" in unit


def test_the_script_removes_the_unit_its_link_itself_and_the_credential():
    script = fbr.script_text()
    (removal,) = re.findall(r"^\s*rm -f (.*)$", script, re.M)
    assert set(removal.split()) == {
        fbr.WANTS_PATH, fbr.UNIT_PATH, fbr.SCRIPT_PATH, fbr.CONF_PATH
    }  # fmt: skip
    assert f"rmdir {fbr.CONF_DIR}" in script
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def test_the_script_pins_the_key_and_keeps_the_secret_off_the_command_line():
    script = fbr.script_text()
    assert '--pinnedpubkey "$FERRY_REPORT_PIN"' in script
    assert "-K -" in script and "Authorization: Bearer %s" in script
    assert "curl" in script.split("-K -")[0].rsplit("printf", 1)[1]
    # python3 when there is no curl: the certificate's SHA-256, as paired
    assert 'os.environ["FERRY_REPORT_FP"]' in script


def test_a_credential_with_shell_characters_is_refused():
    for bad in ("10.0.2.2'; rm -rf /; '", "$(reboot)"):
        with pytest.raises(ValueError):
            fbr.Credential(bad, 7420, CRED.report_id, CRED.secret, CRED.pin, "f" * 64)
    with pytest.raises(ValueError):
        fbr.Credential("h", 1, CRED.report_id, "a'b" * 8, CRED.pin, "f" * 64)
    v6 = fbr.Credential(
        "fd00::2", 7420, CRED.report_id, CRED.secret, CRED.pin, "f" * 64
    )
    assert v6.url.startswith("https://[fd00::2]:7420/")


def test_the_image_reports_with_curl_else_python3_else_not_at_all(tmp_path):
    assert fbr.tool(guest_with(tmp_path / "a", "curl", "python3")) == "curl"
    assert fbr.tool(guest_with(tmp_path / "b", "python3")) == "python3"
    assert fbr.tool(guest_with(tmp_path / "c")) is None
    no_systemd = guest_with(tmp_path / "d", "curl")
    (tmp_path / "d/lib/systemd/systemd").unlink()
    assert fbr.tool(no_systemd) is None


def test_an_image_without_a_tool_gets_a_warning_and_nothing_is_registered(tmp_path):
    guest = guest_with(tmp_path)
    events, seen = recording()
    asked = []
    assert fbr.arm(guest, asked.append, "lab-1", events) is None
    assert asked == []
    assert "neither curl nor python3" in warnings(seen)[0]
    assert not (tmp_path / "etc/ferry").exists()


def test_a_server_that_cannot_register_leaves_the_image_untouched(tmp_path):
    guest = guest_with(tmp_path, "curl")
    events, seen = recording()

    def refuse(hostname):
        raise fbr.NotArmed("ferry serve at 10.0.2.2:7420 did not register it: 404")

    assert fbr.arm(guest, refuse, "lab-1", events) is None
    assert "did not register it" in warnings(seen)[0]
    assert not any(os.path.lexists(tmp_path / p[1:]) for p in fbr.INSTALLED)


def test_arm_registers_under_the_deployed_host_name(tmp_path):
    guest = guest_with(tmp_path, "curl")
    events, seen = recording()
    names = []

    def register(hostname):
        names.append(hostname)
        return CRED

    armed = fbr.arm(guest, register, "lab-525400fe0701", events)
    assert names == ["lab-525400fe0701"]
    assert (armed.server, armed.tool) == ("10.0.2.2:7420", "curl")
    assert all(os.path.lexists(tmp_path / p[1:]) for p in fbr.INSTALLED)


def test_the_spki_pin_is_what_openssl_computes_for_the_server_key(tmp_path):
    identity = load_or_create_identity(tmp_path / "id")
    der = subprocess.run(
        ["openssl", "x509", "-in", str(identity.cert_path), "-outform", "der"],
        capture_output=True,
        check=True,
    ).stdout
    pub = subprocess.run(
        ["openssl", "x509", "-in", str(identity.cert_path), "-pubkey", "-noout"],
        capture_output=True,
        check=True,
    ).stdout
    spki = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=pub,
        capture_output=True,
        check=True,
    ).stdout
    expected = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert spki_pin(der) == f"sha256//{expected}"


V2P = (
    "ferry.mode=v2p ferry.server=10.0.0.5:7420 ferry.token="
    + "s" * 24
    + ":"
    + "a" * 64
    + " ferry.image=web01 ferry.target=sda ferry.confirm=sda"
)


def test_the_report_key_is_on_by_default_and_0_switches_it_off():
    assert kernel_cmdline.parse(V2P).report is True
    off = kernel_cmdline.parse(V2P + " ferry.report=0")
    assert off.report is False and not off.problems
    assert "(no first-boot report)" in kernel_cmdline.describe(off)
    assert kernel_cmdline.parse(V2P + " ferry.report=1").report is True
    bad = kernel_cmdline.parse(V2P + " ferry.report=no")
    assert [p.message for p in bad.fatal] == ["ferry.report=no is not one of 0, 1"]
    p2v = kernel_cmdline.parse(V2P.replace("v2p", "p2v") + " ferry.report=0")
    assert "ferry.report applies to ferry.mode=v2p only" in [
        p.message for p in p2v.problems if not p.fatal
    ]


def test_registration_and_report_bodies_are_checked_before_anything_is_kept():
    reg = Registration.from_json(
        {"hostname": "lab-1", "image": "web01", "macs": ["52:54:00:fe:07:01"]}
    )
    assert reg.macs == ("52:54:00:fe:07:01",)
    for bad in (
        {"hostname": "lab 1", "image": "web01"},
        {"hostname": "lab-1", "image": "../x"},
        {"hostname": "lab-1", "image": "web01", "macs": ["nope"]},
    ):
        with pytest.raises(BadRequest):
            Registration.from_json(bad)
    good = {
        "hostname": "lab-1",
        "nic": "ens3",
        "mac": "52:54:00:FE:07:01",
        "addr": "10.0.2.15",
        "boot_seconds": 23.4,
    }
    assert Report.from_json(good).mac == "52:54:00:fe:07:01"
    for key, value in (("addr", "10.0.2"), ("boot_seconds", "1"), ("nic", "a;b")):
        with pytest.raises(BadRequest):
            Report.from_json({**good, key: value})
    slot = SlotStatus("0123456789abcdef", "lab-1", "web01", reg.macs, 1.0)
    slot.report = Report.from_json(good)
    assert SlotStatus.from_json(slot.to_json()) == slot


def test_the_deploy_registers_a_report_only_for_an_image_from_a_server():
    from converters.deploy import _report_registrar
    from converters.deploy_fixups import Hardware
    from converters.deploy_plan import DeployRequest
    from converters.deploy_source import ImageInfo

    # nothing listens on the discard port: the registration fails
    server = "ferry://127.0.0.1:9/?fp=" + "0" * 64 + "&token=" + "t" * 24
    info = ImageInfo("web01", (("sda", 1 << 30),), server)
    hardware = Hardware("bios", ("ahci",), ("52:54:00:fe:07:01",))
    events, seen = recording()
    off = DeployRequest(info, [], [], report=False)
    assert _report_registrar(off, hardware, events) is None
    from_file = DeployRequest("/media/usb/web01.qcow2", [], [], report=True)
    assert _report_registrar(from_file, hardware, events) is None
    said = [e.message for e in seen if isinstance(e, Log)]
    assert said == [
        "first-boot report: off: the machine will not report",
        "first-boot report: off: the image is a file or URL, there is no ferry "
        "serve to report to",
    ]
    register = _report_registrar(
        DeployRequest(info, [], [], report=True), hardware, events
    )
    with pytest.raises(fbr.NotArmed, match="ferry serve at 127.0.0.1:9 did not"):
        register("lab-525400fe0701")
