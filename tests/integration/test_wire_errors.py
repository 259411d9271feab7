"""Refusals: strangers, wrong servers, full storage, corrupted payloads."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import threading

import pytest
import test_wire_support as support
from test_wire_support import D, MiB, Serve, qemu_img_compare, write_source

from converters.extents import ExtentMap
from converters.wire import client as client_module
from converters.wire import protocol
from converters.wire.client import DiskSource, upload
from converters.wire.connection import WireClient
from converters.wire.errors import (
    BadRequest,
    CertificateMismatch,
    Conflict,
    RangeNotSatisfiable,
    StorageFull,
    Unauthorized,
)
from converters.wire.pairing import Pairing

serve, pairing = support.serve, support.pairing  # fixtures


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_wrong_secret_gets_401_and_creates_nothing(tmp_path, serve, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(4 * MiB, D, "random")])
    stranger = dataclasses.replace(pairing, secret="not-the-secret-at-all")
    before = _listing(serve.storage)

    with pytest.raises(Unauthorized) as caught:
        upload(stranger, "intruder", [DiskSource("sda", source, emap)])
    # Even for a disk of a session that does not exist: 401, not 404.
    client = WireClient(stranger)
    with pytest.raises(Unauthorized):
        client.request("PUT", protocol.disk_path("intruder", "sda"), b"x")
    client.close()

    assert caught.value.status == 401
    assert _listing(serve.storage) == before
    assert not (serve.storage / "intruder").exists()
    assert "AUTH denied" in serve.log.read_text()


def test_a_wrong_certificate_is_refused_before_anything_is_sent(
    tmp_path, serve, pairing
):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(4 * MiB, D, "random")])
    impostor = dataclasses.replace(pairing, fingerprint="ab" * 32)

    with pytest.raises(CertificateMismatch) as caught:
        upload(impostor, "pc1", [DiskSource("sda", source, emap)])

    message = str(caught.value)
    assert "\n" not in message and "does not match" in message
    assert not (serve.storage / "pc1").exists()
    assert "AUTH" not in serve.log.read_text()  # the token never left


def test_a_disk_larger_than_free_storage_is_refused_up_front(tmp_path, serve, pairing):
    source = tmp_path / "sda.raw"
    source.write_bytes(b"")
    huge = shutil.disk_usage(serve.storage).free * 2
    before = _listing(serve.storage)

    with pytest.raises(StorageFull) as caught:
        upload(pairing, "big", [DiskSource("sda", source, ExtentMap.whole(huge))])

    assert caught.value.status == 507
    assert "free" in str(caught.value)
    assert _listing(serve.storage) == before


@pytest.fixture
def small_storage(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256M", "tmpfs", mount])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    server = Serve(mount / "storage", tmp_path / "serve.stderr")
    yield server
    server.stop()
    server.end_orphans()
    subprocess.run(["umount", "-l", mount], check=True)


def test_storage_full_midway_marks_the_image_incomplete_and_loses_nothing(
    tmp_path, small_storage
):
    serve = small_storage
    pairing = serve.start()
    first = tmp_path / "first.raw"
    first_map = write_source(first, [(16 * MiB, D, "random")], seed=7)
    upload(pairing, "earlier", [DiskSource("sda", first, first_map)])
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(96 * MiB, D, "random")])
    disks = [DiskSource("sda", source, emap)]
    client = WireClient(pairing)
    client.open_session("later", {}, {"sda": emap})  # passes the space check
    client.close()
    filler = serve.storage / "filler"
    free = shutil.disk_usage(serve.storage).free
    with open(filler, "wb") as f:
        f.write(os.urandom(free - 40 * MiB))  # then something else took space

    with pytest.raises(StorageFull) as caught:
        upload(pairing, "later", disks)

    assert caught.value.status == 507 and "incomplete" in str(caught.value)
    # session.json (which the full storage may not take) says incomplete,
    # the status says why.
    assert serve.session_record("later")["disks"][0]["complete"] is False
    client = WireClient(pairing)
    status = client.request_json("GET", protocol.disk_path("later", "sda") + "/status")
    client.close()
    assert status["complete"] is False and "storage full" in status["error"]
    earlier = serve.storage / "earlier" / "sda.qcow2"
    assert serve.session_record("earlier")["disks"][0]["complete"] is True
    assert qemu_img_compare(first, earlier).returncode == 0
    # Space freed, the same session finishes.
    filler.unlink()
    result = upload(pairing, "later", disks)
    assert result.disks["sda"].complete
    later = serve.storage / "later" / "sda.qcow2"
    assert qemu_img_compare(source, later).returncode == 0


def test_a_corrupted_payload_is_rejected_and_sent_again(
    tmp_path, serve, pairing, monkeypatch
):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(24 * MiB, D, "random")])
    corrupted = []
    lock = threading.Lock()

    def corrupting(encoder, data):
        payload = encoder.encode(data)
        with lock:
            if corrupted:
                return payload
            corrupted.append(payload.checksum)
        body = bytearray(payload.body)
        body[12345] ^= 0xFF  # one bit pattern flipped on the way
        return dataclasses.replace(payload, body=bytes(body))

    monkeypatch.setattr(client_module, "encode_payload", corrupting)
    result = upload(pairing, "bad", [DiskSource("sda", source, emap)])

    stats = result.disks["sda"]
    assert corrupted and stats.rejected == 1 and stats.complete
    assert qemu_img_compare(source, serve.storage / "bad" / "sda.qcow2").returncode == 0
    assert "REJECT disk=sda" in (serve.storage / "bad" / "serve.log").read_text()


def test_malformed_requests_are_refused_with_their_reason(tmp_path, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(MiB, D, "random")])
    upload(pairing, "done", [DiskSource("sda", source, emap)])
    client = WireClient(pairing)
    path = protocol.disk_path("done", "sda")
    data = b"x" * 4096
    good = {
        "Content-Range": protocol.content_range(0, len(data)),
        protocol.CHECKSUM_HEADER: protocol.checksum(data),
    }

    with pytest.raises(Conflict, match="complete"):
        client.request("PUT", path, data, good)
    with pytest.raises(BadRequest, match="Checksum"):
        client.request("PUT", path, data, {"Content-Range": good["Content-Range"]})
    outside = dict(good, **{"Content-Range": protocol.content_range(MiB, 4096)})
    client.open_session("open", {}, {"sda": emap})
    with pytest.raises(RangeNotSatisfiable):
        client.request("PUT", protocol.disk_path("open", "sda"), data, outside)
    with pytest.raises(BadRequest, match="unknown op"):
        client.request_json("PATCH", path, {"op": "defragment"})
    with pytest.raises(Conflict, match="other disks"):
        client.open_session("done", {}, {"sdb": emap})
    with pytest.raises(BadRequest):
        client.open_session("bad name", {}, {"sda": emap})
    client.close()


def test_pairing_from_kernel_keys_reaches_the_server(pairing):
    keys = pairing.kernel_keys()
    client = WireClient(Pairing.parse(keys))
    assert "sessions" in client.server_status()
    client.close()
