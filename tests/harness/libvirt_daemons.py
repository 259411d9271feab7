"""Two libvirtd daemons on one machine, so that a libvirt migration can be
tested here (issue 8).

One libvirtd refuses to migrate a domain to itself: the migration cookie
carries the host UUID, and the destination rejects its own. So each daemon
gets its own `host_uuid` (libvirtd.conf) and its own state: it runs in a
private mount namespace (`unshare -m`) in which its own directories are bound
over /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
/var/log/libvirt. Its sockets are in a directory both namespaces see, and the
URI names one with `qemu+unix:///system?socket=...`: libvirt accepts a
migration to this host only through an explicit unix socket
(virDomainMigrateCheckNotLocal).

The QEMUs a daemon starts share its namespace, so one path means a different
file to each side: the guest's console log, and the migration stream's unix
socket, which lets a relay (migration_link) sit between the source's path and
the destination's. Each daemon is started and ended by its pid; its domains
are destroyed through libvirt before it ends."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Inside each daemon's namespace: the directories bound over the system's.
BOUND = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
}
# The migration stream's socket, as both daemons' QEMUs spell it.
STREAM_DIR = "/var/lib/libvirt/ferry"

START = """
set -e
mount --make-rprivate /
mkdir -p /run/libvirt
{binds}
exec libvirtd -f /etc/libvirt/libvirtd.conf --pid-file {root}/libvirtd.pid
"""

QEMU_CONF = """
# Guests' consoles go to files, not to virtlogd (not started here).
stdio_handler = "file"
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
# No per-domain /dev namespace or cgroups: this host has no systemd.
namespaces = [ ]
cgroup_controllers = [ ]
migration_port_min = {port}
migration_port_max = {port_max}
"""


def why_not() -> str | None:
    """Why two libvirtd daemons cannot run here, or None."""
    if os.geteuid() != 0:
        return "libvirtd with private mount namespaces needs root"
    for tool in ("libvirtd", "unshare", "qemu-system-x86_64"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "python3-libvirt is not installed"
    return None


@dataclass
class Daemon:
    root: Path
    port: int  # first migration port this daemon hands out
    host_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.root / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    def host_path(self, inside: str) -> Path:
        """Where a path under a bound directory really is."""
        for prefix, name in BOUND.items():
            if inside == prefix or inside.startswith(prefix + "/"):
                return self.root / name / inside[len(prefix) :].lstrip("/")
        return Path(inside)

    def start(self, timeout: float = 30) -> Daemon:
        for name in BOUND.values():
            (self.root / name).mkdir(parents=True, exist_ok=True)
        for inside in ("/var/log/libvirt/qemu", STREAM_DIR):
            self.host_path(inside).mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(exist_ok=True)
        (self.root / "etc" / "libvirtd.conf").write_text(
            f'host_uuid = "{self.host_uuid}"\n'
            f'unix_sock_dir = "{self.socket.parent}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.root}/libvirtd.log"\n'
        )
        (self.root / "etc" / "qemu.conf").write_text(
            QEMU_CONF.format(port=self.port, port_max=self.port + 15)
        )
        binds = "\n".join(
            f"mount --bind {self.root / name} {inside}"
            for inside, name in BOUND.items()
        )
        script = START.format(binds=binds, root=self.root)
        with open(self.root / "daemon.out", "wb") as out:
            # unshare and sh exec: the pid is libvirtd's.
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"libvirtd did not start: {self.log()}")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        import libvirt

        if not self.socket.exists():
            return False
        try:
            libvirt.open(self.uri).close()
        except libvirt.libvirtError:
            return False
        return True

    def log(self) -> str:
        text = ""
        for name in ("daemon.out", "libvirtd.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")[-2000:]
        return text

    def destroy_domains(self) -> None:
        import libvirt

        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return
        try:
            for dom in conn.listAllDomains():
                # A transient domain is gone once destroyed.
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.destroy_domains()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class DaemonPair:
    """A source and a destination daemon in a short temporary directory
    (unix socket paths must stay under 108 bytes)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-lv-", dir="/tmp"))
        self.a = Daemon(self.dir / "a", 49400)
        self.b = Daemon(self.dir / "b", 49420)

    def __enter__(self) -> DaemonPair:
        self.a.start()
        try:
            self.b.start()
        except BaseException:
            self.a.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.b.stop()
        finally:
            self.a.stop()
            shutil.rmtree(self.dir, ignore_errors=True)
