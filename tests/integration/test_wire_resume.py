"""A dropped link or a restarted server costs a resume, never a re-send of
what the server had committed, and never a wrongly complete image."""

from __future__ import annotations

import threading
import time

import pytest
import test_wire_support as support
from test_wire_support import (
    LAYOUT_256,
    D,
    MiB,
    Proxy,
    expected_image,
    qemu_img_compare,
    write_source,
)

from converters.events import EventStream, Progress
from converters.wire.client import DiskSource, UploadOptions, upload
from converters.wire.connection import WireClient
from converters.wire.errors import TransferError
from converters.wire.pairing import Pairing
from converters.wire.protocol import disk_path

serve, pairing = support.serve, support.pairing  # fixtures

OPTIONS = UploadOptions(workers=4, retry_timeout=60)


def test_a_cut_link_resumes_and_sends_nothing_twice(tmp_path, serve, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, LAYOUT_256)
    proxy = Proxy(pairing.port)
    via_proxy = Pairing("127.0.0.1", proxy.port, pairing.fingerprint, pairing.secret)
    proxy.cut_after = emap.bytes_of(D) // 4  # about a third of the wire bytes
    try:
        result = upload(
            via_proxy, "cut", [DiskSource("sda", source, emap)], options=OPTIONS
        )
    finally:
        proxy.close()

    stats = result.disks["sda"]
    assert proxy.cuts >= 1 and stats.link_failures >= 1
    assert stats.complete
    expected = expected_image(source, emap, tmp_path / "e.raw")
    assert (
        qemu_img_compare(expected, serve.storage / "cut" / "sda.qcow2").returncode == 0
    )
    # Each DATA range was acknowledged once (as data or as zeros), or found
    # on the server after the cut; only requests caught by the cut went
    # again, after the server said it lacked them: one per failure, plus at
    # most one per worker that was already sending when its failure came in
    # (under load the count and the requests in flight drift apart).
    handled = stats.data_sent + stats.zero_detected + stats.found_after_retry
    assert handled == emap.bytes_of(D)
    caught = stats.link_failures + OPTIONS.workers
    assert stats.resent + stats.found_after_retry <= caught * 8 * MiB
    status = WireClient(pairing).request_json(
        "GET", disk_path("cut", "sda") + "/status"
    )
    assert status["resent_bytes"] == 0
    assert "RESENT" not in (serve.storage / "cut" / "serve.log").read_text()


def test_a_killed_server_restarts_and_the_client_resumes(tmp_path, serve, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, LAYOUT_256)
    events = EventStream()
    crashed = threading.Event()
    lock = threading.Lock()

    def crash_and_restart() -> None:
        serve.kill()  # SIGKILL: nothing flushed, qemu-nbd orphaned
        time.sleep(1.0)
        serve.start(port=serve.port)

    def on_event(event) -> None:
        if not isinstance(event, Progress) or event.done <= event.total // 3:
            return
        with lock:  # workers emit from their own threads
            if crashed.is_set():
                return
            crashed.set()
        threading.Thread(target=crash_and_restart).start()

    events.subscribe(on_event)
    result = upload(
        pairing,
        "crash",
        [DiskSource("sda", source, emap)],
        options=OPTIONS,
        events=events,
    )

    stats = result.disks["sda"]
    assert crashed.is_set() and stats.link_failures >= 1
    assert stats.complete
    expected = expected_image(source, emap, tmp_path / "e.raw")
    image = serve.storage / "crash" / "sda.qcow2"
    assert qemu_img_compare(expected, image).returncode == 0
    # What the journal held before the crash was not sent again.
    assert "RESENT" not in (serve.storage / "crash" / "serve.log").read_text()
    assert "END stale qemu-nbd" in serve.log.read_text()


def test_an_interrupted_transfer_never_claims_to_be_complete(tmp_path, serve, pairing):
    source = tmp_path / "sda.raw"
    emap = write_source(source, [(96 * MiB, D, "random")])
    disks = [DiskSource("sda", source, emap)]
    events = EventStream()

    def on_event(event) -> None:
        if isinstance(event, Progress) and event.done > event.total // 4:
            serve.stop()  # a clean stop: flushes and journals what it has

    events.subscribe(on_event)
    # Paced and in small requests, so the requests in flight while the server
    # drains cannot carry the rest of the disk, however loaded the host.
    paced = UploadOptions(
        retry_timeout=2, workers=2, chunk_size=1 * MiB, bandwidth=16 * MiB
    )
    with pytest.raises(TransferError, match="unreachable"):
        upload(pairing, "half", disks, options=paced, events=events)

    record = serve.session_record("half")
    assert record["disks"][0]["complete"] is False
    journal = (serve.storage / "half" / "sda.journal").read_text().splitlines()
    committed = sum(int(line.split()[1]) for line in journal[1:])
    assert 0 < committed < emap.size

    # The live side rebooted: the same session, sent again, sends the rest.
    serve.start()
    result = upload(serve.pairing, "half", disks)
    stats = result.disks["sda"]
    assert stats.complete
    assert stats.committed_before == committed
    assert stats.data_sent == emap.size - committed
    assert (
        qemu_img_compare(source, serve.storage / "half" / "sda.qcow2").returncode == 0
    )
