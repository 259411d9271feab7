"""The Network screen sets a static address for real: the app runs inside
a network namespace joined by a veth pair to another namespace where a
real ferry serve listens (tests/integration/test_network_config.py makes
them); the connection test that follows the change reaches the server.
The server is unreachable from the namespace before the change (the
negative control lives in the engine's test)."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.test_network_config import (
    HOST_ADDR,
    LIVE_ADDR,
    REPO,
    ip,
)
from tests.integration.test_network_config import netns as netns  # noqa: F401
from tests.integration.test_network_config import served as served  # noqa: F401


def test_the_network_screen_sets_a_static_address_and_reaches_the_server(netns, served):
    result = subprocess.run(
        ["ip", "netns", "exec", netns.live, sys.executable]
        + ["-m", "tests.tui.netns_app", str(served), netns.live_if]
        + [LIVE_ADDR, HOST_ADDR],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    status, server, row = result.stdout.strip().splitlines()[-3:]
    assert status == f"{netns.live_if}: configured (through ip)."
    assert server.startswith(f"OK: ferry serve 0.1.0 at {HOST_ADDR}")
    fp = served.fingerprint
    assert f"certificate {fp[:8]} {fp[8:16]}" in server
    assert row.split()[0] == netns.live_if and LIVE_ADDR in row.split()
    # The screen said "static" because the kernel holds it without a lease.
    assert row.split()[-1] == "static"
    routes = ip("-n", netns.live, "route", "show", "default")
    assert f"via {HOST_ADDR}" in routes
