"""`ferry serve` converts a machine capture when it completes, in a worker,
and reports it in the session's status; `--no-convert` opts out. The
successful path (a capture that then boots on virtio) is proven by
tests/e2e/test_live_p2v_boots.py and the golden path; here a capture with
no operating system fails the conversion quickly, which shows the failure
path for real."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest
import test_wire_support as support

from converters.extents import Extent, ExtentKind, ExtentMap
from converters.inventory import Disk, Machine
from converters.wire import autoconvert
from converters.wire.client import DiskSource, upload
from converters.wire.connection import WireClient

MiB = 1 << 20
SIZE = 64 * MiB


def blank_machine(tmp_path, name: str) -> tuple[list[DiskSource], dict]:
    """A disk with a filesystem and no operating system, and an inventory
    as `ferry capture` sends one."""
    source = tmp_path / f"{name}.raw"
    with open(source, "wb") as f:
        f.truncate(SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(source)], check=True)
    emap = ExtentMap(SIZE, [Extent(0, SIZE, ExtentKind.DATA)])
    inventory = Machine(
        firmware="bios",
        cpus=1,
        memory=1 << 30,
        disks=(Disk("sda", "/dev/sda", SIZE),),
        nics=(),
        hostname=name,
    )
    return [DiskSource("sda", source, emap)], inventory.to_json()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def converting_serve(tmp_path):
    server = support.Serve(tmp_path / "storage", tmp_path / "serve.log", convert=True)
    yield server
    server.stop()
    server.end_orphans()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_serve_converts_a_completed_capture_and_reports_a_failure_leaving_it_unchanged(
    tmp_path, converting_serve
):
    pairing = converting_serve.start()
    disks, inventory = blank_machine(tmp_path, "blank")
    upload(pairing, "blank", disks, inventory=inventory)
    session = converting_serve.storage / "blank"
    image = session / "sda.qcow2"
    before = sha256(image)
    client = WireClient(pairing)
    queued = client.session("blank")["conversion"]
    assert queued["state"] in ("queued", "converting"), queued

    # The server keeps receiving while it converts; a raw upload without
    # an inventory is not a machine to convert.
    others, _ = blank_machine(tmp_path, "other")
    started = time.monotonic()
    upload(pairing, "raw", others)
    assert time.monotonic() - started < 60
    assert autoconvert.read_status(session).state in ("queued", "converting")
    assert client.session("raw")["conversion"] is None

    status = autoconvert.wait(session, timeout=800)
    assert status.state == "failed", status
    assert "operating system" in status.error
    reported = client.server_status()["sessions"]
    by_name = {s["name"]: s["conversion"] for s in reported}
    assert by_name["blank"]["state"] == "failed"
    assert by_name["blank"]["error"] == status.error
    client.close()
    # The capture is exactly as received, and nothing of the attempt is left.
    assert sha256(image) == before
    assert sorted(p.name for p in session.glob("*.qcow2*")) == ["sda.qcow2"]
    log = converting_serve.log.read_text()
    assert "CONVERT failed session=blank" in log
    assert f"retry: ferry convert {session}" in log
    assert "disks unchanged" in (session / "convert.log").read_text()


def test_no_convert_leaves_completed_captures_alone(tmp_path, serve):
    pairing = serve.start()  # the helper serves with --no-convert
    disks, inventory = blank_machine(tmp_path, "manual")
    upload(pairing, "manual", disks, inventory=inventory)
    client = WireClient(pairing)
    assert client.session("manual")["complete"]
    time.sleep(1)
    assert client.session("manual")["conversion"] is None
    client.close()
    assert not (serve.storage / "manual" / autoconvert.STATUS_FILE).exists()
    assert "CONVERT off" in serve.log.read_text()


serve = support.serve  # fixture
