"""qcow2 backend: ``qemu-nbd`` on a unix socket next to the image, reached
through libnbd (``nbd.Backend``).

qemu-nbd rather than writing qcow2 ourselves: it keeps the image consistent,
turns zero requests into zero clusters that hold no data (``--discard=unmap``)
and is the same code that will run the VM. It runs in user space, so hosts
without the nbd kernel module work. The process is ours: started here, ended
by its own pid, and its pid is kept next to the image so that a server that
was killed can end a qemu-nbd it left behind (which would otherwise hold the
image's write lock forever).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import logging
import mmap
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import nbd

log = logging.getLogger(__name__)

# A unix socket path must fit sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def create(path: str | os.PathLike, size: int) -> None:
    """A new, empty qcow2 image: every cluster unallocated."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", os.fspath(path), str(size)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def open(path: str | os.PathLike, mode: str = "r", *, connections: int = 4, **_):
    server = QemuNbd(Path(path), readonly=mode == "r", connections=connections)
    server.start()
    try:
        return nbd.Backend(
            str(server.socket_path), mode, connections=connections, on_close=server.stop
        )
    except BaseException:
        server.stop()
        raise


class QemuNbd:
    def __init__(self, image: Path, *, readonly: bool, connections: int) -> None:
        self.image = image.resolve()
        self.readonly = readonly
        self.connections = connections
        self.pid_path = self.image.with_name(self.image.stem + ".nbd.pid")
        sock = self.image.with_name(self.image.stem + ".nbd.sock")
        self._tmpdir: str | None = None
        if len(str(sock)) > MAX_SOCKET_PATH:
            self._tmpdir = tempfile.mkdtemp(prefix="ferry-nbd-")
            sock = Path(self._tmpdir) / "nbd.sock"
        self.socket_path = sock
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        end_stale(self.pid_path, self.image)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        cmd = [
            "qemu-nbd",
            "--format=qcow2",
            f"--socket={self.socket_path}",
            # one more than the clients: the readiness probe below is a
            # connection too, and a loaded qemu-nbd may not have seen it
            # close before the clients arrive (it resets the surplus one)
            f"--shared={self.connections + 1}",
            "--persistent",
            *_cache_options(self.image, self.readonly),
            "--discard=unmap",
        ]
        if self.readonly:
            cmd.append("--read-only")
        cmd.append(str(self.image))
        # stderr to a file, not a pipe: nobody reads a pipe while it runs.
        # Its own session: a Ctrl-C meant for the server must not end
        # qemu-nbd before the server has flushed and journaled through it.
        with tempfile.TemporaryFile() as errors:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
            self.pid_path.write_text(f"{self._proc.pid}\n")
            log.info(
                "START qemu-nbd pid=%d image=%s socket=%s readonly=%s",
                self._proc.pid,
                self.image,
                self.socket_path,
                self.readonly,
            )
            try:
                self._wait_ready(errors)
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self, errors) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                errors.seek(0)
                text = errors.read().decode(errors="replace").strip()
                raise OSError(f"qemu-nbd failed on {self.image}: {text}")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.socket_path))
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise OSError(f"qemu-nbd did not listen on {self.socket_path}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.info("STOP qemu-nbd pid=%d status=%s", proc.pid, proc.returncode)
        for path in (self.pid_path, self.socket_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def _cache_options(image: Path, readonly: bool) -> list[str]:
    """O_DIRECT where the filesystem has it: qemu-nbd then skips the copy
    into the page cache (half its CPU time per byte, measured here), the
    host's memory is not filled with images it will not read again, and
    the periodic flush has little left to write. tmpfs has no O_DIRECT.

    Read-only opens (images ferry serve offers for deploy) keep the page
    cache: a lab reads one image many times, and the deploy bench's image
    came in 16.0 s instead of 19.7 s through it (unshaped loopback)."""
    if readonly:
        return ["--cache=writeback"]
    try:
        fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return ["--cache=writeback"]
    os.close(fd)
    # aio=threads, not native: writes into fresh qcow2 clusters extend the
    # file, and ext4 completes an extending O_DIRECT write inside io_submit,
    # so with aio=native qemu-nbd's one thread stalls on every 8 MiB write
    # (strace: 16 ms median, 2.9 s of a 1.4 GB capture's 7 s). 1.4 GB in
    # 8 MiB writes from 6 clients, load 5-6: native 190-250 MB/s, threads
    # 220-300 MB/s, same CPU.
    return ["--cache=none", "--aio=threads"]


def end_stale(pid_path: Path, image: Path) -> None:
    """End a qemu-nbd that a killed server left serving ``image``: by the pid
    it recorded, and only if that pid still runs qemu-nbd on this image."""
    try:
        pid = int(pid_path.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return
    if not argv or not argv[0].endswith(b"qemu-nbd") or os.fsencode(image) not in argv:
        return
    log.warning("END stale qemu-nbd pid=%d image=%s", pid, image)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    pid_path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's parent may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True)
class FileRun:
    """A guest range of a qcow2 image: stored as is at ``host`` in the
    image's file, or reading as zeros (``host`` None)."""

    start: int
    length: int
    host: int | None


class PlainReader:
    """Reads a qcow2 image's guest bytes straight from its file, where
    qemu-img's own map says they are stored plain.

    ferry serve reads imported images this way: through qemu-nbd each read
    costs a fresh buffer in qemu-nbd, a copy out of the page cache, one
    through the socket and one out of it, together as much CPU as the TLS
    and hashing of the same bytes. The map is only valid while the image
    cannot change: the caller keeps a read-only qemu-nbd open on it, whose
    lock keeps writers out, and reads what the map does not cover
    (compressed clusters) through it.
    """

    def __init__(self, path: Path, runs: list[FileRun]) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(self._fd).st_size
        # A map pointing past the file's end (a damaged image) is read
        # through qemu-nbd, which reports the error, never through the mmap
        # (SIGBUS).
        self.runs = [r for r in runs if r.host is None or r.host + r.length <= size]
        self._starts = [r.start for r in self.runs]
        self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) if size else None

    def view(self, offset: int, length: int) -> memoryview | None:
        """The range as a read-only view of the file's pages when one plain
        run holds all of it (no copy: the hash, zstd and TLS read the page
        cache), else None."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0 or self._map is None:
            return None
        run = self.runs[i]
        if run.host is None or offset + length > run.start + run.length:
            return None
        start = run.host + offset - run.start
        # One readahead for the chunk instead of a fault per few pages.
        page = start - start % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_WILLNEED, page, start + length - page)
        return memoryview(self._map)[start : start + length]

    @classmethod
    def open(cls, path: Path) -> PlainReader | None:
        """None for an image whose bytes are not in its own file as they
        read (a backing file, an external data file, encryption)."""
        info = _qemu_img_json("info", path)
        specific = info.get("format-specific", {}).get("data", {})
        if (
            info.get("format") != "qcow2"
            or "backing-filename" in info
            or info.get("encrypted")
            or "data-file" in specific
        ):
            return None
        runs = []
        for item in _qemu_img_json("map", path):
            if item.get("depth", 0) != 0:
                continue
            if item.get("data") and "offset" in item:
                runs.append(FileRun(item["start"], item["length"], item["offset"]))
            elif item.get("zero") and not item.get("data"):
                runs.append(FileRun(item["start"], item["length"], None))
        return cls(path, runs)

    def read_into(self, offset: int, view: memoryview, fallback) -> None:
        """Fills ``view`` from guest ``offset``; ``fallback(offset, view)``
        reads the parts the map leaves out."""
        end = offset + len(view)
        pos = offset
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while pos < end:
            run = self.runs[i] if i < len(self.runs) else None
            if run is None or run.start > pos:
                gap_end = min(end, run.start if run else end)
                fallback(pos, view[pos - offset : gap_end - offset])
                pos = gap_end
                continue
            stop = min(end, run.start + run.length)
            if stop > pos:
                piece = view[pos - offset : stop - offset]
                if run.host is None:
                    piece[:] = bytes(len(piece))
                else:
                    _pread_all(self._fd, piece, run.host + pos - run.start)
                pos = stop
            i += 1

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        # Views still held (a cached reply) keep the mapping until they go.
        mapping, self._map = self._map, None
        if mapping is not None:
            with contextlib.suppress(BufferError):
                mapping.close()


def _qemu_img_json(command: str, path: Path):
    out = subprocess.run(
        ["qemu-img", command, "--output=json", "-f", "qcow2", os.fspath(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    pos = 0
    while pos < len(view):
        n = os.preadv(fd, [view[pos:]], offset + pos)
        if n == 0:
            raise OSError(errno.EIO, f"short read at {offset + pos} of an image")
        pos += n
