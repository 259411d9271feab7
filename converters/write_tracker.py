"""Which blocks of a running machine's disks were written: the dirty sets of
live capture.

The kernel's block layer reports every request it completes (the events
blktrace records). blktrace itself reads them through relay files in
debugfs, and kernels in lockdown (Secure Boot; this development machine
too: "Lockdown: blktrace: debugfs access is restricted") refuse those
files. The same events are tracepoints (``block:block_rq_complete``,
``block:block_bio_queue``) readable through tracefs under lockdown, so the
tracker reads them from a private ftrace instance: its own ring buffer,
filtered in the kernel to the captured disks.

Correctness rests on completion events: a block is marked dirty once its
write has completed, and the round that sends it reads it after the mark,
hence after the write. A queue event marks it earlier too (cheap, and it
starts sending hot blocks sooner). ``swap`` hands over the dirty set and
starts an empty one under one lock, after a marker written into the
instance's own buffer has come back through the pipe: every event before
the marker is in the set handed over, nothing is lost between rounds. A
full ring buffer drops events; the tracker then says so (``lost``) and the
caller must treat the whole disk as dirty.

Sectors in these events are absolute on the whole disk (partition bios are
remapped before they are queued), so a disk's dirty offsets are the
capture's offsets; events of its partitions' device numbers count too.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from converters.wire.ranges import RangeSet

log = logging.getLogger(__name__)

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("block_rq_complete", "block_bio_queue")
# The ring buffers of all CPUs together: deep enough for seconds of small
# writes (an event is ~100 bytes) while the reader is busy, without taking
# a gigabyte of kernel memory on a 64-CPU server; lost events are detected.
BUFFER_TOTAL_KB = 65536
BUFFER_KB_RANGE = (1024, 16384)  # per CPU
SECTOR = 512
# One byte per block in the dirty map: 4 KiB blocks (the page and usual
# filesystem block) up to disks of 64 GiB, coarser beyond so that the map
# stays within 16 MiB however big the disk.
MAX_MAP_BYTES = 1 << 24
MIN_BLOCK = 4096

# "dd-637 [000] ..... 15069.57: block_rq_complete: 7,0 WS () 20482 + 2560 ..."
_EVENT = re.compile(
    rb"(block_rq_complete|block_bio_queue): (\d+),(\d+) (\w*) (?:\([^)]*\) )?"
    rb"(\d+) \+ (\d+)"
)


class TrackerError(Exception):
    """Write tracking cannot start; the message is one line for the user."""


@dataclass(frozen=True)
class TrackedDisk:
    """One whole disk to watch, and the device numbers that count as its own
    (the disk and its partitions)."""

    name: str
    devnos: tuple[tuple[int, int], ...]
    size: int


@dataclass
class DirtySet:
    """Blocks written while one round ran, as byte ranges of the disk."""

    ranges: RangeSet
    lost: bool  # the kernel dropped events: anything may be dirty

    @property
    def total(self) -> int:
        return self.ranges.total


def block_size(size: int) -> int:
    block = MIN_BLOCK
    while size // block > MAX_MAP_BYTES:
        block *= 2
    return block


def buffer_kb(cpus: int | None = None) -> int:
    low, high = BUFFER_KB_RANGE
    return min(high, max(low, BUFFER_TOTAL_KB // (cpus or os.cpu_count() or 1)))


def disk_of(path: str) -> TrackedDisk:
    """The tracked description of a whole block device."""
    st = os.stat(path)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    sysdir = Path(f"/sys/dev/block/{major}:{minor}")
    name = sysdir.resolve().name
    devnos = [(major, minor)]
    for part in sysdir.resolve().iterdir():
        dev = part / "dev"
        if (part / "partition").exists() and dev.exists():
            a, b = dev.read_text().strip().split(":")
            devnos.append((int(a), int(b)))
    size = int((sysdir / "size").read_text()) * SECTOR
    return TrackedDisk(name, tuple(devnos), size)


def ensure_tracefs() -> Path:
    """tracefs mounted at its usual place (live systems may lack the mount)."""
    if (TRACEFS / "instances").is_dir():
        return TRACEFS
    subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
        capture_output=True,
        check=False,
    )
    if not (TRACEFS / "instances").is_dir():
        raise TrackerError(
            f"tracefs is not available at {TRACEFS}: write tracking needs a "
            "kernel with CONFIG_FTRACE and the block tracepoints"
        )
    return TRACEFS


class _Bitmap:
    """One byte per block of one disk (bytearray slices mark in C)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.block = block_size(size)
        self.count = -(-size // self.block)
        self.bits = bytearray(self.count)

    def mark(self, start: int, end: int) -> None:
        first, last = start // self.block, min(-(-end // self.block), self.count)
        if last > first:
            self.bits[first:last] = b"\x01" * (last - first)

    def ranges(self) -> RangeSet:
        out = RangeSet()
        for m in re.finditer(b"\x01+", self.bits):
            out.add(m.start() * self.block, min(m.end() * self.block, self.size))
        return out


class WriteTracker:
    """Tracks writes to ``disks`` from ``start`` to ``stop``; ``swap`` ends
    a round. Use as a context manager so that the kernel side goes away."""

    def __init__(self, disks: list[TrackedDisk]) -> None:
        self.disks = {d.name: d for d in disks}
        self._by_devno = {n: d.name for d in disks for n in d.devnos}
        self._maps = {d.name: _Bitmap(d.size) for d in disks}
        self._lock = threading.Lock()
        self._marker_seen = threading.Condition(self._lock)
        self._markers_seen: set[str] = set()
        self._instance: Path | None = None
        self._thread: threading.Thread | None = None
        self._pipe = None
        self._stopping = False
        self._dropped = 0
        self.events = 0

    def __enter__(self) -> WriteTracker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        root = ensure_tracefs()
        remove_stale_instances(root)
        inst = root / "instances" / f"ferry-{os.getpid()}"
        try:
            inst.mkdir()
        except OSError as e:
            raise TrackerError(f"cannot create a trace instance {inst}: {e}") from e
        self._instance = inst
        try:
            (inst / "buffer_size_kb").write_text(str(buffer_kb()))
            devs = " || ".join(f"dev == {(a << 20) | b}" for a, b in self._by_devno)
            for event in EVENTS:
                edir = inst / "events" / "block" / event
                _write_filter(edir / "filter", devs)
                (edir / "enable").write_text("1")
            self._pipe = open(inst / "trace_pipe", "rb", buffering=0)  # noqa: SIM115
        except OSError as e:
            self.stop()
            raise TrackerError(f"cannot enable block tracepoints: {e}") from e
        self._thread = threading.Thread(
            target=self._read, name="ferry-write-tracker", daemon=True
        )
        self._thread.start()
        # Events are in the buffer from here on; the marker proves the
        # reader drains it before anything is sent.
        self.barrier()

    def _read(self) -> None:
        # trace_pipe blocks while empty; `stop` writes a marker to wake it.
        pending = b""
        fd = self._pipe.fileno()
        while not self._stopping:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            self._handle(lines)
        self._pipe.close()

    def _handle(self, lines: list[bytes]) -> None:
        with self._lock:
            for line in lines:
                m = _EVENT.search(line)
                if m is None:
                    if b"tracing_mark_write: ferry-barrier-" in line:
                        token = line.rsplit(b"ferry-barrier-", 1)[1].strip()
                        self._markers_seen.add(token.decode())
                        self._marker_seen.notify_all()
                    continue
                rwbs, sector, count = m.group(4), int(m.group(5)), int(m.group(6))
                # Reads and empty flushes change nothing; writes, discards
                # (D) and write-zeroes (N) do. "F" alone is a pre-flush.
                if count == 0 or b"R" in rwbs:
                    continue
                devno = (int(m.group(2)), int(m.group(3)))
                name = self._by_devno.get(devno)
                if name is None:
                    continue
                self.events += 1
                self._maps[name].mark(sector * SECTOR, (sector + count) * SECTOR)

    def barrier(self, timeout: float = 10.0) -> None:
        """Returns once every event recorded before the call has been read."""
        token = f"{os.getpid()}-{time.monotonic_ns()}"
        (self._instance / "trace_marker").write_text(f"ferry-barrier-{token}\n")
        deadline = time.monotonic() + timeout
        with self._lock:
            while token not in self._markers_seen:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    raise TrackerError("the write tracker stopped reading events")
                self._marker_seen.wait(min(left, 0.5))
            self._markers_seen.discard(token)

    def swap(self) -> dict[str, DirtySet]:
        """The dirty sets since the last swap (or start); tracking goes on
        into fresh ones with nothing lost in between."""
        self.barrier()
        dropped = self._dropped_total()
        lost = dropped > self._dropped
        self._dropped = dropped
        out = {}
        with self._lock:
            for name, bitmap in self._maps.items():
                fresh = _Bitmap(bitmap.size)
                self._maps[name] = fresh
                out[name] = DirtySet(bitmap.ranges(), lost)
        if lost:
            log.warning("TRACK lost events dropped=%d", dropped)
        return out

    def _dropped_total(self) -> int:
        total = 0
        for stats in (self._instance / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("overrun", "dropped events"):
                    total += int(value.split()[0])
        return total

    def stop(self) -> None:
        inst, self._instance = self._instance, None
        if inst is None:
            return
        self._stopping = True
        for event in EVENTS:
            try:
                (inst / "events" / "block" / event / "enable").write_text("0")
            except OSError:
                pass
        if self._thread is not None and self._thread.is_alive():
            (inst / "trace_marker").write_text("ferry-stop\n")
            self._thread.join(timeout=5)
        elif self._pipe is not None:
            self._pipe.close()
        _remove_instance(inst)


def _write_filter(path: Path, devs: str) -> None:
    # Reads dominate a busy server: drop them in the kernel where the filter
    # syntax allows it; the reader drops them anyway.
    try:
        path.write_text(f'({devs}) && !(rwbs ~ "*R*")')
    except OSError:
        path.write_text(devs)


def _remove_instance(inst: Path) -> None:
    # A trace_pipe still open (the reader thread) makes rmdir fail: retry.
    for _ in range(50):
        try:
            inst.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    log.warning("TRACK could not remove %s", inst)


def remove_stale_instances(root: Path = TRACEFS) -> None:
    """Instances left by a ferry that was killed (SIGKILL skips cleanup)."""
    for inst in (root / "instances").glob("ferry-*"):
        pid = inst.name.split("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for event in EVENTS:
                try:
                    (inst / "events" / "block" / event / "enable").write_text("0")
                except OSError:
                    pass
            _remove_instance(inst)
