"""A link between two network namespaces: the bench's 1 Gbit/s Ethernet.

Two namespaces made for the run (``ferry-bench-src-PID``, ``-dst-PID``) are
joined by one veth pair with a private /30 assigned inside them only; no
address of the host is touched. Each end's egress is shaped by ``tc tbf``,
so each direction carries at most the link rate, as a switch port would.

Processes run on one side through ``ip netns exec`` (which execs in place:
the pid of the Popen is the pid of the command). Block devices are not
namespaced, so both sides see the same loop devices. ``Ssh`` is the
throwaway sshd that the peers' data paths (virt-p2v, Clonezilla) cross the
link through.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.bench.conftest import Procs

# 1 Gbit/s: the link issue 3 sets for the table.
RATE = "1gbit"
RATE_BYTES = 125_000_000  # bytes per second of RATE
# The bucket holds 256 KiB: four 64 KiB GSO super-packets of veth, so tbf
# never has to split one (it segments an skb larger than its burst), and
# only 2 ms of line rate, so no interval of the run beats 1 Gbit/s by more
# than that. Timers are hrtimers here (CONFIG_HIGH_RES_TIMERS=y), so the
# usual "burst >= rate / HZ" rule for jiffy timers does not apply.
BURST = "256kb"
# 20 ms of queue (2.5 MB at the rate) is a switch-port buffer: room for the
# windows of the four to eight TCP streams ferry and nbdcopy open, so the
# shaper drops nothing in steady state (10 ms dropped a few packets here,
# 5 ms thousands); more only adds queueing delay.
LATENCY = "20ms"
# A private /30 chosen for this bench (TEST-NET-like use of 10/8), assigned
# only inside the two namespaces it creates.
SRC_ADDR = "10.203.113.1"
DST_ADDR = "10.203.113.2"
PREFIX = 30
SSH_PORT = 2222
CHECK_TIMEOUT = 900  # a command of the bench's own, qemu-img compare of 4 GiB


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Link:
    src_ns: str
    dst_ns: str
    src_if: str
    dst_if: str
    src_addr: str = SRC_ADDR
    dst_addr: str = DST_ADDR
    shaped: bool = False

    def ns(self, side: str) -> str:
        return {"src": self.src_ns, "dst": self.dst_ns}[side]

    def exec(self, side: str, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace of ``side`` ("src" or "dst")."""
        return ["ip", "netns", "exec", self.ns(side), *map(str, argv)]

    def enter(self, side: str, argv: list[str]) -> list[str]:
        """``argv`` in the network namespace of ``side`` only. ``ip netns
        exec`` also gives the command a mount namespace with a fresh /sys,
        which hides tracefs (/sys/kernel/tracing) from a live capture's
        write tracker; nsenter switches the network and nothing else."""
        netns_path = f"/run/netns/{self.ns(side)}"
        return ["nsenter", f"--net={netns_path}", "--", *map(str, argv)]

    def tx_bytes(self) -> int:
        """Bytes sent by both ends, from the veth counters of each namespace.

        veth counts a GSO super-packet once with its headers, so per-segment
        TCP/IP headers (about 4.5 % of a full-size frame) are not included:
        the counters read close to the TCP payload plus TLS/ssh framing.
        """
        total = 0
        for side, dev in (("src", self.src_if), ("dst", self.dst_if)):
            out = subprocess.run(
                self.exec(side, ["cat", f"/sys/class/net/{dev}/statistics/tx_bytes"]),
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            total += int(out)
        return total

    def shape(self, rate: str = RATE) -> None:
        for ns, dev in ((self.src_ns, self.src_if), (self.dst_ns, self.dst_if)):
            subprocess.run(
                ["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf"]
                + ["rate", rate, "burst", BURST, "latency", LATENCY],
                check=True,
                capture_output=True,
                timeout=30,
            )
        self.shaped = True

    def qdisc_stats(self) -> str:
        """tc's own counters (sent, dropped, overlimits) of both ends."""
        lines = []
        for ns, dev in ((self.src_ns, self.src_if), (self.dst_ns, self.dst_if)):
            out = subprocess.run(
                ["tc", "-n", ns, "-s", "qdisc", "show", "dev", dev],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            lines.append(f"{dev}: {' '.join(out.split())}")
        return "\n".join(lines)


@contextlib.contextmanager
def link(tag: str | None = None) -> Iterator[Link]:
    """Two fresh namespaces and a veth pair between them, deleted on exit
    (after the caller has ended the processes it started in them)."""
    tag = tag or str(os.getpid())
    lk = Link(
        src_ns=f"ferry-bench-src-{tag}",
        dst_ns=f"ferry-bench-dst-{tag}",
        src_if=f"fbs{tag}"[:15],
        dst_if=f"fbd{tag}"[:15],
    )
    made: list[str] = []
    try:
        for ns in (lk.src_ns, lk.dst_ns):
            _ip("netns", "add", ns)
            made.append(ns)
        # Created inside the source namespace and its peer moved: no veth
        # end ever exists in the host's namespace under a name of ours.
        _ip(
            "-n",
            lk.src_ns,
            "link",
            "add",
            lk.src_if,
            "type",
            "veth",
            "peer",
            "name",
            lk.dst_if,
            "netns",
            lk.dst_ns,
        )
        for ns, dev, addr in (
            (lk.src_ns, lk.src_if, lk.src_addr),
            (lk.dst_ns, lk.dst_if, lk.dst_addr),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield lk
    finally:
        # Deleting a namespace deletes its veth end and so the pair.
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def run(*argv, timeout: float = CHECK_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )


def wait_for(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except subprocess.TimeoutExpired:
            pass  # a probe that hung: try again until the deadline
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


class Ssh:
    """A throwaway sshd on the source side of a link, reached from the
    receiver side: its own keys in a tmpdir, key login only, nothing read
    from /etc/ssh."""

    def __init__(self, procs: Procs, link: Link, folder: Path) -> None:
        self.link = link
        folder.mkdir()
        for key in ("host", "client"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", folder / key)
        (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
        config = folder / "sshd_config"
        config.write_text(
            f"Port {SSH_PORT}\n"
            f"ListenAddress {link.src_addr}\n"
            f"HostKey {folder / 'host'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PidFile none\n"
        )
        self.client = [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(SSH_PORT),
            "-i",
            str(folder / "client"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        # sshd insists on its privilege separation directory; Debian's
        # service makes it at start, and there is no service manager here.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        procs.start(
            "sshd", link.exec("src", ["/usr/sbin/sshd", "-D", "-e", "-f", config])
        )
        wait_for("sshd", lambda: self.remote("true", timeout=10).returncode == 0, 30)

    def command(self, *extra: str) -> list[str]:
        """The ssh client on the receiver side, to the source side."""
        return self.link.exec(
            "dst", [*self.client, *extra, f"root@{self.link.src_addr}"]
        )

    def remote(self, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(*self.command(), script, timeout=timeout)
