"""``make bench``: live capture of a busy disk against a cold capture of the
same disk (issue 9, item 4), in one table.

The disk is a 2 GiB whole-disk ext4 on a loop device, 600 MB of files,
mounted. A steady writer writes at 10% of the link rate. The link is
ferry's own token bucket at 1 Gbit/s on loopback (``--bandwidth``), not
the shaped veth pair of the capture bench. Reported: rounds, bytes per
round, the freeze (the writers' downtime), total time, the writer's
throughput before and during the copy. Then the filesystem is unmounted
and captured cold at the same rate: its downtime is the whole copy (plus
two reboots on a real machine).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from converters.events import EventStream
from converters.live_capture import LiveRequest, live_capture
from tests.integration.test_live_capture_parts import loop_disk

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "bench" / "live-capture.md"
MiB = 1 << 20
LINK = 117e6  # 1 Gbit/s of payload, as the capture bench counts it
WRITER_RATE = LINK / 10


class SteadyWriter(threading.Thread):
    """Writes 64 KiB blocks into rotating files at `rate` bytes/s and
    counts what each write(2) returned, with timestamps."""

    def __init__(self, mount: Path, rate: float) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.mount, self.rate = mount, rate
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (time, total bytes)

    def run(self) -> None:
        block = os.urandom(64 * 1024)
        total, start, n = 0, time.monotonic(), 0
        while not self.stop.is_set():
            path = self.mount / f"w-{n % 50}"
            with open(path, "wb") as f:
                for _ in range(64):  # 4 MiB per file
                    f.write(block)
                    total += len(block)
                    self.samples.append((time.monotonic(), total))
                    ahead = total / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                    if self.stop.is_set():
                        break
            n += 1

    def rate_between(self, t0: float, t1: float) -> float:
        inside = [(t, b) for t, b in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def test_bench_live_capture_against_cold_capture(serve, pairing, tmp_path):
    mount = tmp_path / "mnt"
    with loop_disk(tmp_path / "disk.img", 2 << 30, "ext4", mount) as dev:
        for i in range(150):  # 600 MB of files
            (mount / f"data-{i}").write_bytes(os.urandom(4 * MiB))
        subprocess.run(["sync"], check=True)
        writer = SteadyWriter(mount, WRITER_RATE)
        writer.start()
        time.sleep(5)
        copy_start = time.monotonic()
        try:
            result = live_capture(
                LiveRequest(
                    server=str(pairing),
                    disks=[Path(dev).name],
                    name="live",
                    include_loop=True,
                    bandwidth=LINK,
                ),
                EventStream(),
            )
        finally:
            copy_end = time.monotonic()
            time.sleep(2)
            writer.stop.set()
            writer.join()
        before = writer.rate_between(copy_start - 5, copy_start)
        during = writer.rate_between(copy_start, copy_end)
        subprocess.run(["umount", str(mount)], check=True)
        cold_start = time.monotonic()
        cold = subprocess.run(
            [sys.executable, "-m", "converters.cli", "capture", "--loop"]
            + ["--server", str(pairing), "--disks", Path(dev).name]
            + ["--name", "cold", "--bandwidth", str(int(LINK))],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        cold_seconds = time.monotonic() - cold_start
        subprocess.run(["mount", dev, str(mount)], check=True)  # for teardown
    assert cold.returncode == 0, cold.stderr
    rows = [
        "| round | sent (MB) | written meanwhile (MB) | seconds | decision |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result.rounds:
        rows.append(
            f"| {r.number} | {r.bytes_sent / 1e6:.1f} | {r.bytes_dirtied / 1e6:.1f} "
            f"| {r.seconds:.2f} | {r.decision} |"
        )
    rows.append(f"| final (read frozen) | {result.final_bytes / 1e6:.1f} | | | |")
    text = "\n".join(
        [
            "# Live capture bench",
            "",
            f"2 GiB ext4, 600 MB of files, mounted; writer at {WRITER_RATE / 1e6:.1f}"
            f" MB/s; link {LINK / 1e6:.0f} MB/s (token bucket, loopback).",
            "",
            *rows,
            "",
            f"- live: freeze {result.freeze_seconds:.3f} s (first-map freeze "
            f"{result.map_freeze_seconds:.3f} s), total {result.total_seconds:.1f} s",
            f"- writer: {before / 1e6:.1f} MB/s before the copy, "
            f"{during / 1e6:.1f} MB/s during it",
            f"- cold capture of the same disk: {cold_seconds:.1f} s, all of it "
            "downtime (plus two reboots on a real machine)",
            "",
        ]
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print(text)
