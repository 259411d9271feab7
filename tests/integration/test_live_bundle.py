"""`ferry serve` hands ferry to a running server (docs/live-capture.md):
``bundle_install.py``, standard library only, fetches the bundle over the
pinned TLS endpoint and installs it into a venv with ``pip --no-index``;
the installed ferry runs. A wrong fingerprint or token gets nothing, and a
server without a bundle says where one goes. (The QEMU test,
tests/e2e/test_live_p2v_boots.py, installs it on a booted machine.)"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import test_wire_support as support

from converters.wire import bundle_install
from converters.wire.bundle import BUNDLE_DIR
from converters.wire.pairing import Pairing
from image import bundle

INSTALLER = bundle_install.__file__


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


@pytest.mark.timeout(600)
def test_installer_fetches_the_bundle_over_the_pinned_endpoint_and_ferry_runs(
    tmp_path, serve, wheels
):
    shutil.copytree(wheels, serve.storage / BUNDLE_DIR)
    pairing = serve.start()
    prefix = tmp_path / "opt-ferry"
    done = run_installer(str(pairing), str(prefix))
    assert done.returncode == 0, done.stderr
    ferry = prefix / "bin" / "ferry"
    assert done.stdout.strip() == str(ferry)
    helped = subprocess.run(
        [ferry, "capture", "--help"], capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0, helped.stderr
    assert "--live" in helped.stdout


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
