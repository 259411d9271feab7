"""The images ``ferry serve`` offers for V2P, over TLS on loopback: complete
captures and imported VMs are listed with their disks and sizes, an
interrupted capture is not, and every disk reads back through its extents
exactly as the image holds it."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_wire_support import D, S, Z, expected_image, write_source

from converters.deploy_source import ServerDisk, list_images
from converters.extents import ExtentKind, ExtentMap
from converters.wire.client import DiskSource, upload
from converters.wire.connection import WireClient
from converters.wire.errors import NotFound, Unauthorized
from converters.wire.pairing import Pairing

MiB = 1 << 20
LAYOUT = [
    (3 * MiB, D, "random"),
    (8 * MiB, Z, "hole"),
    (4 * MiB, S, "random"),
    (9 * MiB + 4096, D, "text"),
    (MiB - 4096, D, "zeros"),
    (7 * MiB, Z, "hole"),
]


def read_all(disk: ServerDisk, out) -> ExtentMap:
    """The disk as a sparse raw file, from its DATA extents only."""
    emap = disk.extents()
    with open(out, "wb") as f:
        f.truncate(disk.size)
        for ext in emap.split(8 * MiB):
            if ext.kind is ExtentKind.DATA:
                f.seek(ext.offset)
                f.write(disk.read(ext.offset, ext.length))
    return emap


@pytest.fixture
def offered(tmp_path, serve, pairing):
    """A complete capture pc1, an interrupted one half, an imported vm1."""
    source = tmp_path / "sda.raw"
    emap = write_source(source, LAYOUT)
    upload(pairing, "pc1", [DiskSource("sda", source, emap)])
    client = WireClient(pairing)
    client.open_session("half", {}, {"sda": ExtentMap.whole(8 * MiB)})
    client.close()
    vm = serve.storage / "vm1"
    vm.mkdir()
    other = tmp_path / "other.raw"
    write_source(other, [(2 * MiB, D, "text"), (6 * MiB, Z, "hole")], seed=7)
    subprocess.run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", other, vm / "sda.qcow2"],
        check=True,
    )
    (vm / "inventory.json").write_text(json.dumps({"hostname": "vm1"}))
    expected = expected_image(source, emap, tmp_path / "expected.raw")
    return expected, other


def test_the_server_lists_complete_captures_and_imported_vms_only(offered, pairing):
    images = {i.name: i for i in list_images(pairing)}
    assert sorted(images) == ["pc1", "vm1"]  # "half" is not complete
    assert images["pc1"].kind == "capture"
    assert images["pc1"].disks == (("sda", offered[0].stat().st_size),)
    assert images["vm1"].kind == "import"
    assert images["vm1"].disks == (("sda", 8 * MiB),)


def test_image_disks_read_back_exactly_through_their_data_extents(
    offered, pairing, tmp_path
):
    expected, other = offered
    for image, reference in (("pc1", expected), ("vm1", other)):
        size = reference.stat().st_size
        disk = ServerDisk(pairing, image, "sda", size)
        try:
            emap = read_all(disk, tmp_path / f"{image}.raw")
        finally:
            disk.close()
        assert (tmp_path / f"{image}.raw").read_bytes() == reference.read_bytes()
        # The allocation map leaves the holes out: less than the whole disk
        # travels.
        assert emap.bytes_of(ExtentKind.DATA) < size


def test_unknown_images_and_wrong_secrets_are_refused(offered, pairing):
    disk = ServerDisk(pairing, "half", "sda", 8 * MiB, retry_timeout=1)
    with pytest.raises(NotFound):
        disk.extents()
    disk.close()
    wrong = Pairing(pairing.host, pairing.port, pairing.fingerprint, "x" * 32)
    with pytest.raises(Unauthorized):
        list_images(wrong)


def test_machines_deploying_the_same_image_share_each_storage_read(offered, pairing):
    size = offered[0].stat().st_size
    lab = [ServerDisk(pairing, "pc1", "sda", size) for _ in range(3)]
    try:
        chunks = [(0, 8 * MiB), (8 * MiB, 8 * MiB)]
        for offset, length in chunks:
            first = lab[0].read(offset, length)
            assert all(m.read(offset, length) == first for m in lab[1:])
    finally:
        for machine in lab:
            machine.close()
    client = WireClient(pairing)
    reads = client.request_json("GET", "/v1/images")["reads"]
    client.close()
    assert reads == {"storage": 2, "shared": 4}
