"""``make bench``: live capture of a busy disk against a cold capture of the
same disk (issue 9, item 4), in one table.

The disk is a 2 GiB whole-disk ext4 on a loop device, 840 MB of files
(written in a mount namespace of their own, see ``fill``). A steady
writer writes at 10% of the link rate. The link is the capture bench's:
two network namespaces joined by a veth pair shaped by ``tc tbf`` to
1 Gbit/s (netns.py). ``ferry serve`` runs in the receiver's
namespace, ``ferry capture --live`` in the source's, as a user runs it (a
command, not a call). Reported: rounds, bytes per round, the freeze (the
writers' downtime), total time, the writer's throughput before and during
the copy and its longest wait on one write. Before it, the same disk,
unmounted, is captured cold over the same link: its downtime is the whole
copy (plus two reboots on a real machine).

The capture runs through ``nsenter --net`` rather than ``ip netns exec``:
the latter remounts /sys in a mount namespace of its own, where tracefs
(the write tracker's) is not mounted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bench.netns import RATE, RATE_BYTES, Link
from tests.bench.test_bench_capture import FERRY, end_orphans, start_serve, tail
from tests.integration.test_live_capture_parts import loop_disk

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "bench" / "live-capture.md"
MiB = 1 << 20
WRITER_RATE = RATE_BYTES / 10  # issue 9: a writer at 10% of the link rate
DISK_SIZE = 2 << 30
FILES = 150  # of 4 MiB: 600 MB of live data
WRITER_FILES = 50  # of 4 MiB, rewritten in turn by the writer
RUN_TIMEOUT = 900
ROUND = re.compile(
    r"round (\d+): (\d+) bytes sent in ([\d.]+) s, (\d+) bytes written "
    r"meanwhile \((.*)\)"
)
DONE = re.compile(
    r"complete: (\d+) rounds, final round (\d+) bytes, frozen ([\d.]+) s, "
    r"total ([\d.]+) s"
)


class SteadyWriter(threading.Thread):
    """Writes 64 KiB blocks into rotating files at `rate` bytes/s and
    records when each write(2) returned."""

    def __init__(self, mount: Path, rate: float) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.mount, self.rate = mount, rate
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (time, total bytes)

    def run(self) -> None:
        block = os.urandom(64 * 1024)
        total, start, n = 0, time.monotonic(), 0
        while not self.stop.is_set():
            path = self.mount / f"w-{n % WRITER_FILES}"
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

    def longest_wait(self, t0: float, t1: float) -> float:
        """The longest time between two returned writes in [t0, t1]: the
        freeze, as the writer sees it (pacing sleeps are milliseconds)."""
        times = [t for t, _ in self.samples if t0 <= t <= t1]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@dataclass
class Capture:
    wall: float
    cpu: float
    wire: int
    log: str


def capture(procs, link: Link, name: str, argv: list) -> Capture:
    before = link.tx_bytes()
    usage = procs.measure(name, link.enter("src", argv), RUN_TIMEOUT)
    wire = link.tx_bytes() - before
    log = procs.log(name).read_text(errors="replace")
    assert usage.returncode == 0, f"{name} failed:\n{tail(procs.log(name))}"
    return Capture(usage.wall, usage.cpu, wire, log)


def fill(dev: str, mount: Path) -> None:
    """The disk's files, written in a mount namespace of their own. A mount
    in the host's namespace is copied into every namespace made while it
    exists (another session's ``ip netns exec``, say); on this host's
    private root its unmount does not reach those copies, the filesystem
    stays mounted with its journal in use, and a cold capture then has to
    send it whole ("ext journal needs recovery")."""
    # The writer's files too, so that both captures see as much data.
    names = [f"data-{i}" for i in range(FILES)]
    names += [f"w-{i}" for i in range(WRITER_FILES)]
    script = (
        "import os, sys\n"
        "for path in sys.argv[1:]:\n"
        f"    open(path, 'wb').write(os.urandom({4 * MiB}))\n"
    )
    shell = f'mount {dev} {mount} && "$@"; rc=$?; umount {mount}; exit $rc'
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh"]
        + [sys.executable, "-c", script, *(str(mount / n) for n in names)],
        check=True,
        timeout=600,
    )


def test_bench_live_capture_against_cold_capture(procs, link, bench_dir):
    mount = bench_dir / "mnt"
    mount.mkdir()
    storage = bench_dir / "storage"
    with loop_disk(bench_dir / "disk.img", DISK_SIZE, "ext4") as dev:
        fill(dev, mount)
        link.shape()
        # Network only: ``ip netns exec`` would give the server a copy of
        # the host's mounts (see fill).
        _, pairing = start_serve(
            procs, link, "dst", link.dst_addr, storage, "serve", net_only=True
        )
        disk = Path(dev).name
        common = [FERRY, "capture", "--server", pairing, "--loop", "--disks", disk]
        try:
            # Cold first: the filesystem is mounted nowhere yet.
            cold = capture(procs, link, "capture-cold", [*common, "--name", "cold"])
            subprocess.run(["mount", dev, str(mount)], check=True)
            try:
                writer = SteadyWriter(mount, WRITER_RATE)
                writer.start()
                time.sleep(5)
                copy_start = time.monotonic()
                try:
                    live = capture(
                        procs,
                        link,
                        "capture-live",
                        [*common, "--live", "--name", "live"],
                    )
                finally:
                    copy_end = time.monotonic()
                    time.sleep(2)
                    writer.stop.set()
                    writer.join()
            finally:
                subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True)
                subprocess.run(["umount", str(mount)], check=False)
        finally:
            procs.stop("serve")
            end_orphans(storage)
    before = writer.rate_between(copy_start - 5, copy_start)
    during = writer.rate_between(copy_start, copy_end)
    stall = writer.longest_wait(copy_start, copy_end)
    # The same before the copy: what the machine's load alone costs.
    stall_before = writer.longest_wait(copy_start - 5, copy_start)
    skipped = re.search(r"(\d+) skipped by the map", cold.log)
    assert skipped and int(skipped.group(1)) > 0, (
        "the cold capture's map skipped nothing"
    )
    rounds = [m.groups() for m in ROUND.finditer(live.log)]
    done = DONE.search(live.log)
    assert rounds and done, f"no rounds reported:\n{live.log[-2000:]}"
    n_rounds, final_bytes, frozen, total = done.groups()
    rows = [
        "| round | sent (MB) | written meanwhile (MB) | seconds | decision |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for number, sent, seconds, dirtied, decision in rounds:
        rows.append(
            f"| {number} | {int(sent) / 1e6:.1f} | {int(dirtied) / 1e6:.1f} "
            f"| {float(seconds):.2f} | {decision} |"
        )
    rows.append(f"| final (frozen) | {int(final_bytes) / 1e6:.1f} | | | |")
    verdict = "PASS" if float(frozen) < 1.0 else "MISS"
    text = "\n".join(
        [
            "# Live capture bench",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M')}, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
            f"{os.cpu_count()} CPUs shared by both ends.",
            "",
            f"{DISK_SIZE >> 30} GiB whole-disk ext4, "
            f"{(FILES + WRITER_FILES) * 4 * MiB / 1e6:.0f} MB of files, mounted; "
            f"writer at {WRITER_RATE / 1e6:.1f} MB/s (10% of the link) rewriting "
            f"{WRITER_FILES} of them in turn; link: veth between two network "
            "namespaces, tc tbf "
            f"{RATE} ({RATE_BYTES / 1e6:.0f} MB/s), `ferry capture --live` in "
            "one, `ferry serve` in the other.",
            "",
            *rows,
            "",
            f"- live: {n_rounds} rounds, freeze {float(frozen):.3f} s, total "
            f"{float(total):.1f} s (the command: {live.wall:.1f} s, "
            f"{live.cpu:.1f} CPU s, {live.wire / 1e6:.0f} MB on the wire)",
            f"- writer: {before / 1e6:.1f} MB/s before the copy, "
            f"{during / 1e6:.1f} MB/s during it; its longest wait on one write "
            f"during the copy {stall:.3f} s ({stall_before:.3f} s in the 5 s "
            "before it)",
            f"- cold capture of the same disk (before, mounted nowhere): "
            f"{cold.wall:.1f} s, "
            f"{cold.cpu:.1f} CPU s, {cold.wire / 1e6:.0f} MB on the wire, "
            f"{int(skipped.group(1)) / 1e6:.0f} MB skipped by the map; all of "
            "it downtime (plus two reboots on a real machine)",
            f"- target (issue 9): {verdict} freeze < 1 s for a writer at 10% of "
            f"the link rate: {float(frozen):.3f} s",
            "",
        ]
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print("\n" + text)
