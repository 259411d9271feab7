"""Live capture of mounted, busy filesystems (ext4 and xfs on loop devices)
into a real `ferry serve` on loopback, while a writer keeps creating,
rewriting and deleting files and overwriting a hot file in place."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from converters.events import EventStream
from converters.extents import ExtentKind
from converters.live_capture import LiveFrozen, LiveRequest, live_capture
from converters.precopy_policy import PolicyParams
from tests.integration.test_live_capture_parts import loop_disk

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
HOT = "hot.bin"  # overwritten in place: checked by the full-disk comparison


class Writer(threading.Thread):
    """Whole-file writes are one write(2) into a temporary name and a
    rename, so every file is, at any instant, either before or after an
    operation; `state` holds the sha256 of every file once its rename or
    unlink has returned."""

    def __init__(self, mounts: list[Path], seed: int = 1) -> None:
        super().__init__(name="test-writer", daemon=True)
        self.mounts = mounts
        self.rng = random.Random(seed)
        self.state: dict[str, str] = {}
        self.stop = threading.Event()
        self.ops = 0
        for m in mounts:
            with open(m / HOT, "wb") as f:
                f.write(os.urandom(4 * MiB))
            for i in range(40):  # something for round 1 to send
                self._put(m / f"seed-{i}", 512 * 1024)

    def _put(self, path: Path, size: int) -> None:
        data = self.rng.randbytes(size)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        self.state[str(path)] = hashlib.sha256(data).hexdigest()

    def run(self) -> None:
        rng = self.rng
        hot = [os.open(m / HOT, os.O_WRONLY) for m in self.mounts]
        try:
            while not self.stop.is_set():
                m = rng.randrange(len(self.mounts))
                op = rng.random()
                names = [p for p in self.state if p.startswith(str(self.mounts[m]))]
                if op < 0.5 or not names:
                    self._put(
                        self.mounts[m] / f"f-{rng.randrange(400)}",
                        rng.randrange(1, 96 * 1024),
                    )
                elif op < 0.7:
                    victim = rng.choice(names)
                    os.unlink(victim)
                    del self.state[victim]
                else:  # heavy: blocks of the hot file rewritten in place
                    for _ in range(16):
                        block = rng.randrange(4 * MiB // 4096)
                        os.pwrite(hot[m], rng.randbytes(4096), block * 4096)
                self.ops += 1
                time.sleep(0.002)
        finally:
            for fd in hot:
                os.close(fd)


@pytest.fixture
def busy_disks(tmp_path):
    with ExitStack() as stack:
        disks = []
        for fs, size in (("ext4", 160 * MiB), ("xfs", 320 * MiB)):
            mount = tmp_path / f"mnt-{fs}"
            dev = stack.enter_context(
                loop_disk(tmp_path / f"{fs}.img", size, fs, mount)
            )
            disks.append((dev, mount, fs))
        yield disks


def hashes_in(image: Path, fs: str, mnt: Path) -> dict[str, str]:
    """Files of a captured filesystem image by name: sha256. xfs replays its
    log at mount (a freeze covers the log but leaves it marked in use)."""
    mnt.mkdir()
    # nouuid: the source, same UUID, is still mounted
    opts = "ro,noload" if fs == "ext4" else "rw,nouuid"
    subprocess.run(["mount", "-o", f"loop,{opts}", str(image), str(mnt)], check=True)
    try:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in mnt.iterdir()
            if p.is_file()
        }
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fsck(image: Path, fs: str) -> subprocess.CompletedProcess:
    cmd = (
        ["e2fsck", "-fn", str(image)]
        if fs == "ext4"
        else ["xfs_repair", "-n", str(image)]
    )
    return subprocess.run(cmd, capture_output=True, text=True)


def to_raw(qcow2: Path, raw: Path) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(qcow2), str(raw)], check=True
    )
    return raw


def same_over(a: Path, b: Path, emap) -> list[int]:
    """Offsets of DATA extents of `emap` where the two images differ."""
    bad = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for ext in emap.split(4 * MiB):
            if ext.kind is not ExtentKind.DATA:
                continue
            fa.seek(ext.offset)
            fb.seek(ext.offset)
            if fa.read(ext.length) != fb.read(ext.length):
                bad.append(ext.offset)
    return bad


def test_live_capture_of_busy_ext4_and_xfs_holds_exactly_the_state_at_the_freeze(
    busy_disks, serve, pairing, tmp_path
):
    mounts = [m for _, m, _ in busy_disks]
    writer = Writer(mounts)
    at_freeze: dict = {}

    def on_event(event):
        if isinstance(event, LiveFrozen):
            begun = time.monotonic()
            time.sleep(0.3)  # the writer reaches its next (blocked) syscall
            at_freeze["state"] = dict(writer.state)
            at_freeze["ops"] = writer.ops
            for name, path in event.paths.items():
                copy = tmp_path / f"frozen-{name}.raw"
                # O_DIRECT: the device's page cache may be stale (file data
                # goes around it), and that is the bug this would hide
                subprocess.run(
                    ["dd", f"if={path}", f"of={copy}", "bs=4M", "iflag=direct"]
                    + ["conv=sparse", "status=none"],
                    check=True,
                )
                at_freeze[name] = copy
            at_freeze["seconds"] = time.monotonic() - begun

    events = EventStream()
    events.subscribe(on_event)
    writer.start()
    time.sleep(0.5)
    names = [Path(dev).name for dev, _, _ in busy_disks]
    try:
        result = live_capture(
            LiveRequest(
                server=str(pairing),
                disks=names,
                name="live",
                include_loop=True,
                bandwidth=40e6,
                # a tight target, so that this small disk takes rounds
                policy=PolicyParams(downtime_target=0.02),
            ),
            events,
        )
    finally:
        writer.stop.set()
        writer.join()
    assert at_freeze["ops"] < writer.ops  # the writer ran on after the thaw
    assert len(result.rounds) >= 2
    # the freeze without this test's own look at the frozen sources
    assert result.freeze_seconds - at_freeze["seconds"] < 3
    assert result.map_freeze_seconds < 3
    print(
        f"listener={at_freeze['seconds']:.2f}s "
        f"rounds={[(r.bytes_sent, r.bytes_dirtied) for r in result.rounds]} "
        f"final={result.final_bytes} freeze={result.freeze_seconds:.3f}s "
        f"map_freeze={result.map_freeze_seconds:.3f}s "
        f"total={result.total_seconds:.1f}s ops={writer.ops}"
    )
    for (_dev, mount, fs), name in zip(busy_disks, names, strict=True):
        raw = to_raw(serve.storage / "live" / f"{name}.qcow2", tmp_path / f"{name}.raw")
        # the tracker missed nothing: every used byte equals the frozen source
        assert same_over(at_freeze[name], raw, result.maps[name]) == []
        if fs == "ext4":
            check = fsck(raw, fs)
            assert check.returncode == 0, check.stdout + check.stderr
        files = hashes_in(raw, fs, tmp_path / f"check-{name}")
        if fs == "xfs":  # the mount replayed the log; now it must be clean
            check = fsck(raw, fs)
            assert check.returncode == 0, check.stdout + check.stderr
        expected = {
            Path(p).name: h
            for p, h in at_freeze["state"].items()
            if Path(p).parent == mount
        }
        got = {k: v for k, v in files.items() if not k.endswith(".tmp") and k != HOT}
        assert got == expected


def ferry_live(pairing, names, name, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "converters.cli", "capture", "--live", "--loop"]
        + ["--server", str(pairing), "--disks", ",".join(names), "--name", name]
        + list(extra),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_at(proc: subprocess.Popen, marker: str) -> list[str]:
    """SIGKILL `proc` as soon as it prints a line containing `marker`."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    return seen


def writable(mount: Path, seconds: float = 30.0) -> bool:
    # generous: a sync behind a busy writer on a loaded machine takes a while,
    # and a frozen filesystem never answers at all
    probe = subprocess.Popen(["sh", "-c", f"echo x > {mount}/probe && sync -f {mount}"])
    try:
        return probe.wait(timeout=seconds) == 0
    except subprocess.TimeoutExpired:
        return False


def test_sigkill_mid_round_or_at_the_freeze_leaves_nothing_frozen_and_rerun_completes(
    busy_disks, serve, pairing, tmp_path
):
    mounts = [m for _, m, _ in busy_disks]
    names = [Path(dev).name for dev, _, _ in busy_disks]
    writer = Writer(mounts, seed=2)
    writer.start()
    try:
        # mid-round: the link is slow, round 1 lasts seconds
        killed = [ferry_live(pairing, names, "k", "--bandwidth", "10M")]
        seen = kill_at(killed[0], "%")
        assert any("== round" in line for line in seen), seen
        assert all(writable(m) for m in mounts)
        # at the freeze
        killed.append(ferry_live(pairing, names, "k"))
        seen = kill_at(killed[1], "== freeze")
        assert any("== freeze" in line for line in seen), seen
        assert all(writable(m) for m in mounts)
        # no trace instance of a killed run is left once a run starts
        run = ferry_live(pairing, names, "k")
        out = run.communicate(timeout=300)[0]
        assert run.returncode == 0, out
        assert "live capture k complete" in out
        instances = Path("/sys/kernel/tracing/instances")
        assert not [p for p in killed if (instances / f"ferry-{p.pid}").exists()]
    finally:
        writer.stop.set()
        writer.join()
    ext4 = names[0]
    raw = to_raw(serve.storage / "k" / f"{ext4}.qcow2", tmp_path / "k.raw")
    check = fsck(raw, "ext4")
    assert check.returncode == 0, check.stdout + check.stderr


def test_live_capture_of_a_missing_disk_is_one_line_and_touches_nothing(serve, pairing):
    run = subprocess.Popen(
        [sys.executable, "-m", "converters.cli", "capture", "--live", "--loop"]
        + ["--server", str(pairing), "--disks", "nosuchdisk"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no disk 'nosuchdisk'" in lines[0], err
    assert not [p for p in serve.storage.iterdir() if not p.name.startswith(".")]
    assert not Path(f"/sys/kernel/tracing/instances/ferry-{run.pid}").exists()
