"""The Network screen's engine for real, in network namespaces made for the
test: a veth pair joins a "live machine" namespace to a "KVM host"
namespace that runs a real ferry serve. The engine runs inside the live
namespace (``ip netns exec``) with the `ip` path, as it does where
networkd is not running; no interface of the host is touched.

The live side cannot reach the server before its static address is set
(the negative control), and can once the engine has set it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converters import network_config as nc
from converters.wire.pairing import Pairing

REPO = Path(__file__).resolve().parents[2]
# A private /24 used only inside the namespaces this test makes.
LIVE_ADDR = "10.203.120.10/24"
HOST_ADDR = "10.203.120.1"


def ip(*args: str) -> str:
    return subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


class Namespaces:
    def __init__(self) -> None:
        tag = os.getpid()
        self.live, self.host = f"ferry-nc-live-{tag}", f"ferry-nc-host-{tag}"
        self.live_if, self.host_if = f"fnc{tag % 100000}a", f"fnc{tag % 100000}b"
        # `ip netns exec` bind-mounts this over /etc/resolv.conf inside.
        self.etc = Path("/etc/netns") / self.live

    def create(self) -> None:
        ip("netns", "add", self.live)
        ip("netns", "add", self.host)
        ip("link", "add", self.live_if, "type", "veth", "peer", "name", self.host_if)
        ip("link", "set", self.live_if, "netns", self.live)
        ip("link", "set", self.host_if, "netns", self.host)
        ip("-n", self.host, "address", "add", f"{HOST_ADDR}/24", "dev", self.host_if)
        ip("-n", self.host, "link", "set", self.host_if, "up")
        ip("-n", self.host, "link", "set", "lo", "up")
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text("# empty until ferry writes it\n")

    def destroy(self) -> None:
        for ns in (self.live, self.host):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)

    def python(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``code`` run by ferry's Python inside the live namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.live, sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def netns():
    ns = Namespaces()
    try:
        ns.create()
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def served(netns, tmp_path):
    """ferry serve listening in the host namespace only."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.host, sys.executable, "-m"]
        + ["converters.wire.serve_command", "--storage", str(tmp_path / "storage")]
        + ["--listen", f"{HOST_ADDR}:0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "serve.log", "ab"),  # noqa: SIM115 - the child's
        text=True,
    )
    try:
        pairing = None
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            if line.startswith("pairing: "):
                pairing = Pairing.parse(line.split(" ", 1)[1])
                break
            if time.monotonic() > deadline:
                break
        assert pairing, (tmp_path / "serve.log").read_text()
        yield pairing
    finally:
        # `ip netns exec` execs in place: this pid is ferry serve's.
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(30)
        proc.stdout.close()


def check_server_from_live(netns, pairing: Pairing) -> str:
    result = netns.python(
        "from tui.connect import check_server, explain\n"
        "try:\n"
        f"    print('OK', check_server({str(pairing)!r}, timeout=3).fingerprint)\n"
        "except Exception as e:\n"
        f"    print('FAILED', explain(e, {str(pairing)!r}))\n"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_static_address_set_in_a_namespace_reaches_ferry_serve(netns, served):
    before = check_server_from_live(netns, served)
    assert before.startswith("FAILED") and "Cannot reach" in before

    started = time.monotonic()
    result = netns.python(
        "from converters import network_config as nc\n"
        f"c = nc.static({netns.live_if!r}, {LIVE_ADDR!r}, {HOST_ADDR!r},"
        " '10.203.120.53, 10.203.120.54')\n"
        "print(nc.apply(c, use_networkd=False))\n"
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ip"

    shown = json.loads(ip("-n", netns.live, "-j", "address", "show", netns.live_if))
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in shown[0]["addr_info"]]
    assert LIVE_ADDR in addrs
    assert shown[0]["operstate"] in ("UP", "UNKNOWN")
    routes = json.loads(ip("-n", netns.live, "-j", "route", "show", "default"))
    assert [r["gateway"] for r in routes] == [HOST_ADDR]
    resolv = (netns.etc / "resolv.conf").read_text()
    assert "nameserver 10.203.120.53\nnameserver 10.203.120.54\n" in resolv

    after = check_server_from_live(netns, served)
    assert after == f"OK {served.fingerprint}", after
    print(f"static address applied in {seconds:.2f} s")

    # Applying again (a second Apply press) replaces, never adds.
    again = netns.python(
        "from converters import network_config as nc\n"
        f"nc.apply(nc.static({netns.live_if!r}, '10.203.120.11/24'),"
        " use_networkd=False)\n"
    )
    assert again.returncode == 0, again.stderr
    shown = json.loads(ip("-n", netns.live, "-j", "address", "show", netns.live_if))
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in shown[0]["addr_info"]]
    assert "10.203.120.11/24" in addrs and LIVE_ADDR not in addrs


def test_an_unknown_nic_is_refused_and_nothing_changes(netns):
    before = ip("-n", netns.live, "address")
    result = netns.python(
        "from converters import network_config as nc\n"
        "try:\n"
        "    nc.apply(nc.static('eth9', '10.203.120.10/24'), use_networkd=False)\n"
        "except nc.NetworkConfigError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"no NIC 'eth9' (NICs: {netns.live_if})"
    assert ip("-n", netns.live, "address") == before


@pytest.mark.parametrize(
    ("address", "gateway", "dns", "message"),
    [
        ("10.0.0.5", "", "", "needs a prefix length"),
        ("10.0.0.300/24", "", "", "is not an address/prefix"),
        ("10.0.0.0/24", "", "", "is the network address of 10.0.0.0/24"),
        ("10.0.0.255/24", "", "", "is the broadcast address"),
        ("10.0.0.5/24", "10.0.1.1", "", "gateway 10.0.1.1 is not in 10.0.0.0/24"),
        ("10.0.0.5/24", "10.0.0.5", "", "this machine's own address"),
        ("10.0.0.5/24", "10.0.0.1", "8.8.8.8 dns.example", "'dns.example'"),
    ],
)
def test_a_bad_static_address_is_one_clear_sentence(address, gateway, dns, message):
    with pytest.raises(nc.NetworkConfigError, match=message):
        nc.static("eth0", address, gateway, dns)


def test_networkd_files_say_static_or_dhcp_for_one_nic():
    unit = nc.networkd_unit(nc.static("eno1", "10.0.0.5/24", "10.0.0.1", "10.0.0.2"))
    assert "[Match]\nName=eno1\n" in unit
    for line in ("Address=10.0.0.5/24", "Gateway=10.0.0.1", "DNS=10.0.0.2"):
        assert line + "\n" in unit
    assert "DHCP=no\n" in unit
    dhcp = nc.networkd_unit(nc.dhcp("eno1"))
    assert "DHCP=yes\n" in dhcp and "ClientIdentifier=mac\n" in dhcp
    assert "Address=" not in dhcp
    # Before the image's catch-all 80-ferry-wired.network.
    assert nc.PREFIX < "80-ferry-wired"
