"""Fixtures of the bench: the cached source disk on loop devices, the
namespaced link, and child processes that are measured (wall, CPU, peak
memory) and always ended by their own pid, whatever happens to the run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bench import netns
from tests.bench.bench_disk import SourceDisk, loop, source_disk
from tests.conftest import require_space

GiB = 1 << 30
# The disk is cached; a run writes two images of its live data and one
# Clonezilla file, one at a time, and a few GiB of slack for the copies.
WORK_SPACE = 8 * GiB
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """What one measured child cost: wall time, CPU (its own and that of
    the children it waited for) and peak resident memory."""

    wall: float = 0.0
    cpu: float = 0.0
    maxrss: int = 0  # bytes
    returncode: int | None = None
    pid: int = 0


class Procs:
    """Child processes of the run, each logged to DIR/NAME.log and ended by
    its pid at teardown (SIGTERM, then SIGKILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        out = open(self.log(name), "ab")  # noqa: SIM115 - owned by the child
        # stderr joins stdout in the log, unless stdout goes elsewhere.
        kw.setdefault("stderr", out if "stdout" in kw else subprocess.STDOUT)
        kw.setdefault("stdout", out)
        kw.setdefault("stdin", subprocess.DEVNULL)
        try:
            proc = subprocess.Popen([str(a) for a in argv], **kw)
        finally:
            out.close()
        self.running[name] = proc
        return proc

    def measure(self, name: str, argv: list[str], timeout: float, **kw) -> Usage:
        """Run ``argv`` to its end (killed after ``timeout`` s); its rusage
        comes from wait4, so it covers the child and what it waited for."""
        started = time.monotonic()
        proc = self.start(name, argv, **kw)
        deadline = started + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.stop(name, signal.SIGKILL)
                raise TimeoutError(f"{name} ran longer than {timeout:.0f} s")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.running.pop(name, None)
        return Usage(
            wall=time.monotonic() - started,
            cpu=ru.ru_utime + ru.ru_stime,
            maxrss=ru.ru_maxrss * 1024,
            returncode=proc.returncode,
            pid=proc.pid,
        )

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 30) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(grace)

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


@dataclass
class PidPeak:
    comm: str
    parent: int
    hwm: int = 0  # VmHWM, bytes
    rss_first: int = 0  # VmRSS when first seen (an idle server's size)
    cpu_first: float = 0.0  # utime + stime when sampling began (0: born later)
    cpu: float = 0.0  # utime + stime, last seen

    @property
    def cpu_used(self) -> float:
        return self.cpu - self.cpu_first


@dataclass
class Sampler:
    """Samples /proc every ``interval`` s for this process's descendants:
    VmHWM (the kernel's own peak, so a spike between two samples still
    counts) and CPU time, whose growth while sampling is a row's CPU."""

    interval: float = 0.1
    seen: dict[int, PidPeak] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._first = True

    def __enter__(self) -> Sampler:
        self._sample()
        self._first = False
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for pid, parent in _descendants(os.getpid()):
            info = _proc_info(pid)
            if info is None:
                continue
            comm, hwm, rss, cpu = info
            peak = self.seen.get(pid)
            if peak is None or peak.comm != comm:  # new, or exec'd since
                first = cpu if self._first else 0.0
                peak = self.seen[pid] = PidPeak(comm, parent, 0, rss, first)
            peak.hwm = max(peak.hwm, hwm)
            peak.cpu = max(peak.cpu, cpu)

    def peak(self, pid: int) -> PidPeak:
        return self.seen.get(pid, PidPeak("?", 0))

    def by_comm(self, comm: str) -> list[PidPeak]:
        return [p for p in self.seen.values() if p.comm == comm]

    def subtree(self, root: int) -> set[int]:
        found = {root}
        grew = True
        while grew:
            more = {pid for pid, p in self.seen.items() if p.parent in found}
            grew = not more <= found
            found |= more
        return found

    def cpu_besides(self, usage: Usage) -> float:
        """CPU of every process but the measured one (whose own count, from
        wait4, is exact) and its children, and but this test process."""
        skip = self.subtree(usage.pid) | {os.getpid()}
        return sum(p.cpu_used for pid, p in self.seen.items() if pid not in skip)


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every process under ``root``."""
    found, todo = [], [(root, 0)]
    while todo:
        pid, parent = todo.pop()
        found.append((pid, parent))
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [(int(c), pid) for c in (task / "children").read_text().split()]
    return found


def _proc_info(pid: int) -> tuple[str, int, int, float] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    kib = lambda key: int(fields.get(key, "0 kB").split()[0]) * 1024  # noqa: E731
    # comm may hold spaces and parentheses: fields count from the last ')'.
    rest = stat.rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
    return fields.get("Name", "?"), kib("VmHWM"), kib("VmRSS"), cpu


@dataclass(frozen=True)
class SourceLoops:
    disk: SourceDisk
    whole: str  # the whole disk, as ferry and nbdkit read it
    part: str  # the ext4 partition, as partclone reads it

    def drop_caches(self) -> None:
        """Cold reads for the next row without touching the host's whole
        page cache: the loops' own caches, and the backing file's."""
        subprocess.run(
            ["blockdev", "--flushbufs", self.whole, self.part], check=True, timeout=60
        )
        fd = os.open(self.disk.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@pytest.fixture(scope="session")
def source() -> SourceDisk:
    from converters import cache

    require_space(cache.root(), 6 * GiB)
    return source_disk()


@pytest.fixture
def source_loops(source: SourceDisk) -> Iterator[SourceLoops]:
    with (
        loop(source.path) as whole,
        loop(source.path, offset=source.part_offset, length=source.part_length) as part,
    ):
        yield SourceLoops(source, whole, part)


@pytest.fixture
def bench_dir(tmp_path: Path) -> Iterator[Path]:
    require_space(tmp_path, WORK_SPACE)
    yield tmp_path
    # pytest keeps the last few tmpdirs: keep the logs, not the images a
    # failed run may have left.
    for pattern in ("**/*.qcow2", "**/*.zst"):
        for big in tmp_path.glob(pattern):
            big.unlink(missing_ok=True)


@pytest.fixture
def procs(bench_dir: Path) -> Iterator[Procs]:
    logs = bench_dir / "logs"
    logs.mkdir()
    registry = Procs(logs)
    try:
        yield registry
    finally:
        registry.stop_all()


@pytest.fixture
def link(procs: Procs) -> Iterator[netns.Link]:
    with netns.link() as lk:
        try:
            yield lk
        finally:
            # Processes first: a namespace is only gone once nothing is in it.
            procs.stop_all()


def keep_fastest(table: dict, row) -> None:
    """Of several runs of one row, the table keeps the fastest: the one the
    shared machine disturbed least."""
    if row.key not in table or row.wall < table[row.key].wall:
        table[row.key] = row


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
