"""`ferry serve` hands ferry to a running server (docs/live-capture.md):
``bundle_install.py``, standard library only, fetches the bundle over the
pinned TLS endpoint and unpacks its wheels under a prefix with a launcher;
the installed ferry runs with what the bundle brought, on a server without
the TUI's or serve's libraries or python3-libvirt, and writes no .pyc. A
wrong fingerprint or token gets nothing, and a server without a bundle says
where one goes. (The QEMU test,
tests/e2e/test_live_p2v_boots.py, installs it on a booted machine.)"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import test_wire_support as support

from converters import __version__
from converters.wire import bundle_install
from converters.wire.bundle import BUNDLE_DIR
from converters.wire.pairing import Pairing
from image import bundle

INSTALLER = bundle_install.__file__
# what the server's distribution provides (docs/live-capture.md)
DEBIAN_BINDINGS = {"parted", "_ped", "pyudev", "_distutils_hack"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    return bundle.build(tmp_path_factory.mktemp("bundle") / "wheels", echo=None)


def run_installer(*args, timeout=300):
    # the system's Python, outside ferry's venv: as on a server without ferry
    return subprocess.run(
        ["/usr/bin/python3", INSTALLER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Run by the installed launcher's Python, as `ferry capture --live` would
# import: every module not from the standard library must come from the
# prefix or be one of the Debian bindings the server brings.
IMPORTS = """
import os, sys, sysconfig
sys.modules["libvirt"] = None  # a server without python3-libvirt
sys.argv = ["ferry", "capture", "--help"]
launcher = os.environ["LAUNCHER"]
try:
    exec(compile(open(launcher).read(), launcher, "exec"), {"__name__": "__main__"})
except SystemExit as e:
    assert not e.code, e.code
import converters.live_capture_command, converters.fsfreeze
std = sysconfig.get_paths()["stdlib"] + "/"
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if path and not path.startswith((std, os.environ["PREFIX"])):
        print("OUTSIDE", name, path)
"""


@pytest.mark.timeout(600)
def test_installer_fetches_the_bundle_over_the_pinned_endpoint_and_ferry_runs(
    tmp_path, serve, wheels
):
    shutil.copytree(wheels, serve.storage / BUNDLE_DIR)
    names = {w.name.split("-")[0] for w in wheels.glob("*.whl")}
    # what only serve and the TUI import stays on the KVM host
    assert {"ferry", "cryptography", "zstandard", "xxhash", "qemu_qmp"} <= names
    assert not names & {"aiohttp", "textual", "rich", "pygments"}
    pairing = serve.start()
    prefix = tmp_path / "opt-ferry"
    done = run_installer(str(pairing), str(prefix))
    assert done.returncode == 0, done.stderr
    ferry = prefix / "bin" / "ferry"
    steps = done.stdout.splitlines()
    assert [s.split()[2] for s in steps[1:]] == ["downloaded", "unpacked", "ferry"]
    assert "verified" in steps[0]
    assert steps[-1] == f"ferry bundle: ferry {__version__} ready: {ferry}"
    helped = subprocess.run(
        [ferry, "capture", "--help"], capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0, helped.stderr
    assert "--live" in helped.stdout
    imported = subprocess.run(
        ["/usr/bin/python3", "-c", IMPORTS],
        env={"LAUNCHER": str(ferry), "PREFIX": f"{prefix}/"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    outside = [o for o in imported.stdout.splitlines() if o.startswith("OUTSIDE")]
    assert all(
        line.split()[2].startswith("/usr/lib/python3/dist-packages/")
        and line.split()[1].split(".")[0] in DEBIAN_BINDINGS
        for line in outside
    ), outside
    assert not list(prefix.rglob("*.pyc"))


def test_installer_refuses_a_wrong_fingerprint_or_token_and_a_missing_bundle(
    tmp_path, serve
):
    pairing = serve.start()  # no bundle in this storage
    prefix = tmp_path / "opt-ferry"
    other_fp = Pairing(pairing.host, pairing.port, "0" * 64, pairing.secret)
    other_token = Pairing(pairing.host, pairing.port, pairing.fingerprint, "x" * 32)
    for bad, reason in (
        (other_fp, "does not match the pairing"),
        (other_token, "401"),
        (pairing, "python -m image.bundle"),
    ):
        done = run_installer(str(bad), str(prefix))
        assert done.returncode == 1
        assert reason in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not prefix.exists()


serve = support.serve  # fixture
