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

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
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
            *_cache_options(self.image),
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


def _cache_options(image: Path) -> list[str]:
    """O_DIRECT where the filesystem has it: qemu-nbd then skips the copy
    into the page cache (half its CPU time per byte, measured here), the
    host's memory is not filled with images it will not read again, and
    the periodic flush has little left to write. tmpfs has no O_DIRECT."""
    try:
        fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return ["--cache=writeback"]
    os.close(fd)
    return ["--cache=none", "--aio=native"]


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
