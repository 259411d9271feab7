"""The parts of live capture on real kernel objects: the write tracker on
loop devices (block tracepoints through tracefs) and the freeze watchdog on
mounted ext4 and xfs."""

from __future__ import annotations

import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from converters.fsfreeze import FreezeExpired, FreezeGuard
from converters.write_tracker import WriteTracker, disk_of

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@contextmanager
def loop_disk(path: Path, size: int, fs: str | None = None, mount: Path | None = None):
    """A loop device over a new file, optionally with a mounted filesystem."""
    with open(path, "wb") as f:
        f.truncate(size)
    if fs:
        subprocess.run([f"mkfs.{fs}", "-q", str(path)], check=True)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        if mount:
            mount.mkdir(exist_ok=True)
            subprocess.run(["mount", dev, str(mount)], check=True)
        yield dev
    finally:
        if mount:
            subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True)
            subprocess.run(["umount", str(mount)], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)


def write_blocks(dev: str, offsets: list[int], size: int = 4096) -> None:
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        aligned = mmap.mmap(-1, size)  # O_DIRECT wants an aligned buffer
        aligned[:] = os.urandom(size)
        for off in offsets:
            os.pwrite(fd, aligned, off)
    finally:
        os.close(fd)


def test_tracker_marks_every_written_block_and_loses_none_between_swaps(tmp_path):
    with loop_disk(tmp_path / "raw.img", 64 * MiB) as dev:
        rng = random.Random(9)
        offsets = [rng.randrange(0, 64 * MiB // 4096) * 4096 for _ in range(3000)]
        with WriteTracker([disk_of(dev)]) as tracker:
            writer = threading.Thread(target=write_blocks, args=(dev, offsets))
            writer.start()
            seen = []
            while writer.is_alive():  # swaps race the writer on purpose
                seen.append(tracker.swap()[Path(dev).name])
                time.sleep(0.01)
            writer.join()
            seen.append(tracker.swap()[Path(dev).name])
        assert len(seen) > 2
        assert not any(s.lost for s in seen)
        union = seen[0].ranges
        for s in seen[1:]:
            union.update(s.ranges)
        missed = [o for o in offsets if not union.covers(o, o + 4096)]
        assert missed == []
        # 4 KiB blocks: nothing beyond what was written is reported
        assert union.total == len(set(offsets)) * 4096


def test_tracker_reports_nothing_for_reads(tmp_path):
    with loop_disk(tmp_path / "raw.img", 16 * MiB) as dev:
        with WriteTracker([disk_of(dev)]) as tracker:
            fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
            buf = mmap.mmap(-1, MiB)
            for off in range(0, 16 * MiB, MiB):
                os.preadv(fd, [buf], off)
            os.close(fd)
            assert tracker.swap()[Path(dev).name].total == 0
        instance = Path(f"/sys/kernel/tracing/instances/ferry-{os.getpid()}")
        assert not instance.exists()


@pytest.fixture
def mounted(tmp_path):
    with (
        loop_disk(tmp_path / "e.img", 64 * MiB, "ext4", tmp_path / "e"),
        loop_disk(tmp_path / "x.img", 320 * MiB, "xfs", tmp_path / "x"),
    ):
        try:
            yield [str(tmp_path / "e"), str(tmp_path / "x")]
        finally:
            for m in ("e", "x"):
                subprocess.run(
                    ["fsfreeze", "-u", str(tmp_path / m)], capture_output=True
                )
            while STUCK:
                STUCK.pop().wait(timeout=30)


STUCK: list[subprocess.Popen] = []


def write_with_timeout(path: str, seconds: float) -> bool:
    """True if a write and fsync to `path` finish within `seconds`; a writer
    still waiting on a frozen filesystem is reaped after the thaw."""
    proc = subprocess.Popen(
        ["sh", "-c", f"echo x > {path}/probe && sync -f {path}/probe"],
    )
    try:
        proc.wait(timeout=seconds)
        return proc.returncode == 0
    except subprocess.TimeoutExpired:
        STUCK.append(proc)
        return False


def test_freeze_blocks_writers_until_thaw(mounted):
    with FreezeGuard(mounted) as guard:
        guard.freeze()
        assert not write_with_timeout(mounted[0], 1.0)
        guard.thaw()
    assert guard.times.seconds > 0.5
    assert all(write_with_timeout(m, 5) for m in mounted)


def test_freeze_time_starts_before_fifreeze_writes_back_and_ends_after_thaw(
    mounted,
):
    # Dirty pages that FIFREEZE must write back before it returns: writers
    # already wait during that, so the reported freeze includes it.
    with open(os.path.join(mounted[1], "dirty"), "wb") as f:
        f.write(os.urandom(96 * MiB))
    with FreezeGuard(mounted) as guard:
        asked = time.monotonic()
        guard.freeze()
        returned = time.monotonic()
        guard.thaw()
        thawed = time.monotonic()
    frozen_at, thawed_at = guard.times.frozen_at, guard.times.thawed_at
    print(f"FIFREEZE with 96 MiB dirty: {returned - frozen_at:.3f} s")
    assert asked < frozen_at < returned - 0.005
    assert returned < thawed_at < thawed
    assert guard.times.seconds > returned - frozen_at


def test_freeze_ends_at_the_watchdog_timeout_and_says_so(mounted):
    with FreezeGuard(mounted, timeout=1.0) as guard:
        guard.freeze()
        time.sleep(1.5)
        assert write_with_timeout(mounted[1], 5)
        with pytest.raises(FreezeExpired):
            guard.thaw()


HOLDER = """
import sys, time
from converters.fsfreeze import FreezeGuard
g = FreezeGuard(sys.argv[1:], timeout=600)
g.start(); g.freeze()
print("frozen", flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_process_holding_the_freeze_thaws_at_once(mounted):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *mounted],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "frozen"
        assert not write_with_timeout(mounted[1], 0.5)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert all(write_with_timeout(m, 5) for m in mounted)
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()


def test_watchdog_thaws_when_ferry_dies_between_asking_and_reading_the_answer(mounted):
    # The answer "frozen" then meets a closed pipe (EPIPE): once this left
    # both filesystems frozen for good.
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "converters.fsfreeze", "600", *mounted],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert watchdog.stdout.readline().strip() == "ready"
    watchdog.stdout.close()
    watchdog.stdin.write("freeze\n")
    watchdog.stdin.flush()
    time.sleep(1)  # the freeze happens, and the answer fails
    watchdog.stdin.close()
    watchdog.wait(timeout=30)
    assert all(write_with_timeout(m, 5) for m in mounted)
