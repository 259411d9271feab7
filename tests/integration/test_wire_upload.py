"""Upload over TLS on loopback into qcow2 on a real ``ferry serve``."""

from __future__ import annotations

import json
import threading
import time

import test_wire_support as support
from test_wire_support import (
    LAYOUT_256,
    D,
    MiB,
    S,
    Z,
    data_ranges,
    expected_image,
    overlaps,
    qemu_img_compare,
    qemu_img_map,
    write_source,
)

from converters.events import EventStream, Progress
from converters.extents import Extent, ExtentKind
from converters.wire.client import DiskSource, UploadOptions, upload
from converters.wire.connection import WireClient

serve, pairing = support.serve, support.pairing  # fixtures

CLUSTER = 64 << 10


def test_upload_writes_what_the_map_says_and_leaves_the_rest_unallocated(
    tmp_path, serve, pairing
):
    source = tmp_path / "sda.raw"
    emap = write_source(source, LAYOUT_256)
    events = EventStream()
    seen: list[Progress] = []
    events.subscribe(lambda e: seen.append(e) if isinstance(e, Progress) else None)

    result = upload(
        pairing,
        "pc1",
        [DiskSource("sda", source, emap)],
        inventory={"hostname": "pc1"},
        events=events,
    )

    stats = result.disks["sda"]
    assert stats.complete
    image = serve.storage / "pc1" / "sda.qcow2"
    compared = qemu_img_compare(expected_image(source, emap, tmp_path / "e.raw"), image)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    # SKIP, ZERO and all-zero DATA hold no data clusters; SKIP is untouched.
    data = data_ranges(image)
    # The fifth row of the layout is DATA that reads as zeros.
    zero_data = Extent(sum(row[0] for row in LAYOUT_256[:4]), LAYOUT_256[4][0], D)
    assert stats.zero_detected == zero_data.length
    for ext in [*emap.of_kind(S), *emap.of_kind(Z), zero_data]:
        # Clusters (64 KiB) shared with DATA next door hold that data.
        start, end = -(-ext.offset // CLUSTER) * CLUSTER, ext.end // CLUSTER * CLUSTER
        assert not overlaps(data, start, end), ext
    for entry in qemu_img_map(image):
        for ext in emap.of_kind(S):
            if ext.offset <= entry["start"] and entry["start"] + CLUSTER <= ext.end:
                assert not entry["present"], entry
    # Nothing under SKIP was sent, compressible data was compressed.
    assert stats.data_sent == emap.bytes_of(D) - zero_data.length
    assert stats.wire_bytes < stats.data_sent
    assert stats.saved > 0 and stats.resent == 0
    # Layout on the server, and an honest record.
    session_dir = serve.storage / "pc1"
    record = json.loads((session_dir / "session.json").read_text())
    assert record["disks"][0]["complete"] is True
    assert json.loads((session_dir / "inventory.json").read_text()) == {
        "hostname": "pc1"
    }
    assert (session_dir / "sda.journal").exists()
    assert "COMPLETE disk=sda" in (session_dir / "serve.log").read_text()
    # Progress ends at the total of DATA bytes.
    assert seen and seen[-1].done == seen[-1].total == emap.bytes_of(D)


def test_a_complete_session_sent_again_sends_nothing(tmp_path, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(8 * MiB, D, "random"), (8 * MiB, S, "random")])
    disks = [DiskSource("sda", source, emap)]
    upload(pairing, "again", disks)

    result = upload(pairing, "again", disks)

    assert result.disks["sda"].complete
    assert result.disks["sda"].data_sent == 0


def test_direct_reads_send_the_same_bytes(tmp_path, serve, pairing):
    source = tmp_path / "sda.raw"
    # Extents that end off any 4 KiB boundary, and a source whose size does.
    layout = [(MiB + 512, D, "text"), (MiB, S, "random"), (3 * MiB + 1536, D, "random")]
    emap = write_source(source, layout)

    options = UploadOptions(direct=True, chunk_size=MiB)
    result = upload(
        pairing, "direct", [DiskSource("sda", source, emap)], options=options
    )

    assert result.disks["sda"].complete
    expected = expected_image(source, emap, tmp_path / "e.raw")
    image = serve.storage / "direct" / "sda.qcow2"
    assert qemu_img_compare(expected, image).returncode == 0


def test_several_disks_move_in_parallel(tmp_path, serve, pairing):
    sources = []
    for i, name in enumerate(["sda", "sdb", "nvme0n1"]):
        path = tmp_path / f"{name}.raw"
        layout = [(12 * MiB + i * MiB, D, "random"), (4 * MiB, Z, "hole")]
        sources.append(DiskSource(name, path, write_source(path, layout, seed=i)))

    result = upload(
        pairing, "multi", sources, options=UploadOptions(compress="none", workers=3)
    )

    for src in sources:
        assert result.disks[src.name].complete
        image = serve.storage / "multi" / f"{src.name}.qcow2"
        expected = expected_image(src.path, src.extents, tmp_path / f"{src.name}.e")
        assert qemu_img_compare(expected, image).returncode == 0
        assert result.disks[src.name].wire_bytes == src.extents.bytes_of(D)


def test_ranged_reads_and_extents_serve_the_image_back(tmp_path, pairing):
    source = tmp_path / "sda.raw"
    layout = [(4 * MiB, D, "text"), (8 * MiB, Z, "hole"), (4 * MiB + 512, D, "random")]
    emap = write_source(source, layout)
    upload(pairing, "v2p", [DiskSource("sda", source, emap)])
    client = WireClient(pairing)

    served = client.extents("v2p", "sda")
    got = b"".join(
        client.read("v2p", "sda", off, min(8 * MiB, emap.size - off))
        for off in range(0, emap.size, 8 * MiB)
    )

    assert got == source.read_bytes()
    assert served.size == emap.size
    kinds = {e.kind for e in served.slice(4 * MiB, 8 * MiB)}
    assert kinds == {ExtentKind.ZERO}
    assert served.bytes_of(ExtentKind.DATA) >= 8 * MiB
    status = client.server_status()
    assert status["sessions"][0]["disks"][0]["complete"] is True
    client.close()


def test_one_server_takes_several_machines_at_once(tmp_path, serve, pairing):
    machines = []
    for i in range(3):
        path = tmp_path / f"pc{i}.raw"
        layout = [(16 * MiB, D, "random"), (8 * MiB, D, "text")]
        machines.append(
            (f"pc{i}", DiskSource("sda", path, write_source(path, layout, i)))
        )
    results = {}

    def capture(name, disk):
        results[name] = upload(pairing, name, [disk], options=UploadOptions(workers=2))

    threads = [threading.Thread(target=capture, args=m) for m in machines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for name, disk in machines:
        assert results[name].disks["sda"].complete
        image = serve.storage / name / "sda.qcow2"
        assert qemu_img_compare(disk.path, image).returncode == 0


def test_bandwidth_limits_the_wire_rate(tmp_path, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(24 * MiB, D, "random")])
    limit = 12e6  # bytes per second
    options = UploadOptions(compress="none", bandwidth=limit)

    started = time.monotonic()
    result = upload(pairing, "slow", [DiskSource("sda", source, emap)], options=options)
    elapsed = time.monotonic() - started

    stats = result.disks["sda"]
    assert stats.complete
    # 24 MiB at 12 MB/s is 2.1 s, less the bucket's quarter-second burst.
    assert stats.wire_bytes / elapsed <= limit * 1.15
    assert elapsed >= 1.8
