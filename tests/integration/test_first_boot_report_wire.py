"""The first-boot report against a real ``ferry serve`` on loopback: a deploy
registers a slot with the pairing token; the slot's one-use secret makes
one report and nothing else; and the script a deployed system runs, run
here on a folder standing for ``/``, reports with a pinned curl (or
python3) and removes itself, while a wrong pin is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from converters import deploy_report, first_boot_report
from converters.first_boot_report import INSTALLED, Credential
from converters.wire.connection import WireClient
from converters.wire.errors import WireError
from converters.wire.pairing import Pairing
from converters.wire.report_types import REPORTS, report_path

MAC = "52:54:00:fe:07:01"
REPORT = {
    "hostname": "lab-525400fe0701",
    "nic": "ens3",
    "mac": MAC,
    "addr": "10.0.2.15",
    "boot_seconds": 23.4,
}


def as_secret(pairing: Pairing, secret: str) -> WireClient:
    return WireClient(dataclasses.replace(pairing, secret=secret), timeout=10)


def refusal(client: WireClient, method: str, path: str, body=None) -> WireError:
    try:
        client.request_json(method, path, body)
    except WireError as e:
        return e
    finally:
        client.close()
    raise AssertionError(f"{method} {path} was accepted")


def listing(pairing: Pairing) -> list[dict]:
    return [
        dataclasses.asdict(s) for s in deploy_report.list_reports(pairing, "lab-img")
    ]


def test_a_slot_secret_makes_one_report_and_nothing_else(serve, pairing):
    cred = deploy_report.register(pairing, "lab-525400fe0701", "lab-img", (MAC,))
    assert cred.host == "127.0.0.1" and cred.port == pairing.port
    assert cred.secret != pairing.secret
    (slot,) = deploy_report.list_reports(pairing)
    assert (slot.state, slot.hostname, slot.macs) == (
        "waiting",
        "lab-525400fe0701",
        (MAC,),
    )
    before = listing(pairing)
    path = report_path(cred.report_id)

    # refused, each with a JSON reason, and nothing changed
    wrong = refusal(as_secret(pairing, "x" * 43), "POST", path, REPORT)
    token = refusal(WireClient(pairing), "POST", path, REPORT)
    assert wrong.status == token.status == 401
    assert "report secret" in str(token)
    own = as_secret(pairing, cred.secret)
    for method, other in (("GET", "/v1/status"), ("GET", REPORTS), ("POST", REPORTS)):
        e = refusal(own, method, other, {"hostname": "x", "image": "y"})
        assert e.status == 401, (method, other)
    e = refusal(own, "POST", path, {**REPORT, "addr": "not-an-address"})
    assert e.status == 400 and "addr" in str(e)
    assert listing(pairing) == before

    reply = as_secret(pairing, cred.secret).request_json("POST", path, REPORT)
    assert reply["state"] == "up"
    (up,) = deploy_report.list_reports(pairing, "lab-img")
    assert up.state == "up" and up.report.nic == "ens3" and up.report.mac == MAC
    assert up.report.addr == "10.0.2.15" and up.report.boot_seconds == 23.4
    assert up.peer == "127.0.0.1"
    after = listing(pairing)

    again = refusal(as_secret(pairing, cred.secret), "POST", path, REPORT)
    assert again.status == 403 and "works once" in str(again)
    assert listing(pairing) == after
    log = serve.log.read_text()
    assert (
        f"REPORT up id={cred.report_id} host=lab-525400fe0701 nic=ens3 mac={MAC} "
        "addr=10.0.2.15 boot=23.4s image=lab-img" in log
    )
    # the server keeps a hash of the secret, never the secret
    (slot_file,) = (serve.storage / ".ferry/reports").glob("*.json")
    assert cred.secret not in slot_file.read_text()
    assert stat.S_IMODE(slot_file.stat().st_mode) == 0o600
    # and its slots outlive a restart
    serve.stop()
    restarted = serve.start(port=pairing.port)
    assert listing(restarted) == after


def test_bad_registrations_are_refused_with_a_reason(pairing):
    client = WireClient(pairing)
    e = refusal(client, "POST", REPORTS, {"hostname": "a b", "image": "img"})
    assert e.status == 400 and "hostname" in str(e)
    e = refusal(client, "POST", REPORTS, {"hostname": "a", "image": "i", "macs": "x"})
    assert e.status == 400
    e = refusal(
        WireClient(dataclasses.replace(pairing, secret="y" * 24)), "GET", REPORTS
    )
    assert e.status == 401
    assert deploy_report.list_reports(pairing) == []


# The script a deployed system runs, on this host.


def fake_root(tmp_path: Path, cred: Credential) -> Path:
    """A folder standing for the deployed system's ``/`` with the report
    installed as first_boot_report.install leaves it."""
    root = tmp_path / "root"
    for path in INSTALLED:
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / first_boot_report.CONF_PATH.lstrip("/")).write_text(
        first_boot_report.conf_text(cred)
    )
    script = root / first_boot_report.SCRIPT_PATH.lstrip("/")
    script.write_text(first_boot_report.script_text(str(root), retry=0))
    (root / first_boot_report.UNIT_PATH.lstrip("/")).write_text(
        first_boot_report.UNIT_TEXT
    )
    os.symlink(first_boot_report.UNIT_PATH, root / first_boot_report.WANTS_PATH[1:])
    return root


def run_script(root: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path or os.environ["PATH"], "LANG": "C"}
    script = root / first_boot_report.SCRIPT_PATH.lstrip("/")
    return subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=120
    )


def left(root: Path) -> list[str]:
    return [p for p in INSTALLED if os.path.lexists(root / p.lstrip("/"))]


def without_curl(tmp_path: Path) -> str:
    """A PATH with what the script needs but curl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cut", "tr", "cat", "rm", "rmdir", "getent", "awk", "ip",
                 "sed", "head", "hostname", "python3", "sleep", "sync"):  # fmt: skip
        found = shutil.which(tool)
        if found:
            os.symlink(
                "/usr/bin/python3" if tool == "python3" else found, bin_dir / tool
            )
    assert not (bin_dir / "curl").exists()
    return str(bin_dir)


@pytest.mark.parametrize("tool", ["curl", "python3"])
def test_the_script_reports_through_its_pin_and_removes_itself(pairing, tmp_path, tool):
    assert shutil.which("curl"), "curl (packaging/debian-packages.txt)"
    cred = deploy_report.register(pairing, "lab-525400fe0701", "lab-img", (MAC,))
    root = fake_root(tmp_path, cred)
    path = without_curl(tmp_path) if tool == "python3" else None
    out = run_script(root, path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reported to ferry serve at 127.0.0.1: up after" in out.stdout
    assert left(root) == []
    assert not (root / "etc/ferry").exists()
    (slot,) = deploy_report.list_reports(pairing)
    assert slot.state == "up", out.stdout + out.stderr
    # what reaches 127.0.0.1 on this host: lo, from 127.0.0.1
    assert (slot.report.nic, slot.report.addr) == ("lo", "127.0.0.1")
    assert slot.report.mac == "00:00:00:00:00:00"
    assert slot.report.hostname == socket.gethostname()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert 0 < slot.report.boot_seconds <= uptime


@pytest.mark.parametrize("tool", ["curl", "python3"])
def test_the_script_refuses_a_server_that_does_not_match_its_pin(
    pairing, tmp_path, tool
):
    cred = deploy_report.register(pairing, "lab-525400fe0701", "lab-img", (MAC,))
    # the pin of another key (curl), another certificate (python3)
    other = dataclasses.replace(
        cred,
        pin="sha256//" + "A" * 43 + "=",
        fingerprint="0" * 64,
    )
    root = fake_root(tmp_path, other)
    path = without_curl(tmp_path) if tool == "python3" else None
    out = run_script(root, path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "did not answer" in out.stdout
    if tool == "curl":
        assert "pinned" in out.stderr.lower() or "(90)" in out.stderr, out.stderr
    else:
        assert "does not match the pin" in out.stderr
    # kept for the next boot, and the server got nothing
    assert left(root) == list(INSTALLED)
    (slot,) = deploy_report.list_reports(pairing)
    assert slot.state == "waiting"
    assert json.loads(json.dumps(slot.report)) is None


def test_the_script_sends_nothing_before_the_network_has_a_route(pairing, tmp_path):
    """network-online.target can come before DHCP: with no route to the
    server the script waits (here: retry=0, gives up at once) instead of
    reporting a machine with no NIC and no address."""
    cred = deploy_report.register(pairing, "lab-525400fe0701", "lab-img", (MAC,))
    root = fake_root(tmp_path, cred)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "cut", "tr", "cat", "rm", "rmdir", "getent", "awk",
                 "sed", "head", "hostname", "curl", "sleep", "sync"):  # fmt: skip
        os.symlink(shutil.which(tool), bin_dir / tool)
    # `ip route get` before the address: no route, nothing printed
    (bin_dir / "ip").write_text(
        "#!/bin/sh\necho 'RTNETLINK answers: unreachable' >&2\nexit 2\n"
    )
    (bin_dir / "ip").chmod(0o755)
    out = run_script(root, str(bin_dir))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "no route to ferry serve at 127.0.0.1" in out.stdout
    assert left(root) == list(INSTALLED)
    (slot,) = deploy_report.list_reports(pairing)
    assert slot.state == "waiting"
