"""``make bench``: cold capture against the tools a technician has today.

One run, one table (issue 3, item 6). The source disk (bench_disk.py) is on
a read-only loop device seen by two network namespaces joined by a veth
pair shaped to 1 Gbit/s (netns.py); the sender side runs in one, the
receiver side in the other:

(a) ``ferry capture`` -> ``ferry serve`` -> qcow2;
(b) virt-p2v's data path: ``nbdkit -r file`` on the source side, reached
    through an ssh tunnel, ``nbdcopy`` -> ``qemu-nbd`` qcow2;
(c) Clonezilla's: the partition table bytes and ``partclone.ext4 -c``,
    through ``zstd`` (Clonezilla's default -z9p is zstdmt at its default
    level), over ssh into a file;
(d) the physical limit: the used bytes after ``zstd -1`` at the link rate.

Then unshaped, on one namespace's loopback: ferry against nbdcopy in source
bytes per second and CPU per GiB. Benchmarks report speed and do not fail
on it: the only assertions are that (a) and (b), shaped and unshaped, made
images that read back as the source.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from converters.disk_map import map_disk
from converters.extents import ExtentKind, ExtentMap
from tests.bench.bench_disk import SourceDisk
from tests.bench.conftest import Procs, Sampler, SourceLoops, keep_fastest, verdict
from tests.bench.netns import BURST, LATENCY, RATE, RATE_BYTES, Link, Ssh, run, wait_for

pytestmark = [pytest.mark.bench, pytest.mark.timeout(5400)]

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "bench" / "capture.md"
FERRY = Path(sys.executable).with_name("ferry")
MiB, GiB = 1 << 20, 1 << 30
FERRY_PORT, NBD_PORT = 7420, 10809
RUN_TIMEOUT = 1200  # one row; (b) at 1 Gbit/s needs about 40 s
# Clonezilla saves the MBR and the gap before the first partition; with a
# GPT, the backup table in the last 33 sectors too.
GPT_BACKUP = 33 * 512

# FERRY_BENCH_ROUNDS=N runs the rows N times in turn and keeps each row's
# fastest run: on a machine shared with other work, the fastest run is the
# least disturbed one. Every run is verified.
ROUNDS = int(os.environ.get("FERRY_BENCH_ROUNDS", "1"))
# FERRY_BENCH_ROWS=a,lo-ferry runs only those rows (a, b, c, lo-ferry,
# lo-nbdcopy): for measuring one change to one tool; the table is then
# partial and says so only by its missing rows. Default: all of them.
ROWS = set(os.environ.get("FERRY_BENCH_ROWS", "a,b,c,lo-ferry,lo-nbdcopy").split(","))
# Where the receiving side keeps what it receives (every row's output):
# "ram" (default), a folder in /dev/shm, or "disk", the bench's folder on
# this VM's one disk. The rows compare transfers, and this VM's disk is
# not a KVM host's storage: writing a new qcow2 on it, qemu-nbd stalled for
# 0.2-0.4 s at a time (ext4's journal and flushes on the virtual disk; the
# client and the server both idle, the link empty), which no row can hide
# and the link limit (d) knows nothing of. "disk" measures that too.
STORE = os.environ.get("FERRY_BENCH_STORE", "ram")
# The largest output: (b)'s qcow2 holds every used and deleted block.
STORE_NEEDS = 5 * GiB
TIME_TARGETS = {
    "b": "<= 0.4 x the time of (b)",
    "c": "no slower than (c)",
    "d": "within 1.3 x of (d)",
}
TARGETS = {
    "time_vs_b": 0.4,  # (a) <= 0.4 x (b)
    "time_vs_c": 1.0,  # (a) no slower than (c)
    "time_vs_d": 1.3,  # (a) within 1.3 x (d)
    "client_rss": 300 * MiB,
    "server_rss": 200 * MiB,  # per session
}


@dataclass
class Row:
    key: str
    what: str
    wall: float
    wire: int
    cpu: float = 0.0  # all processes of the row, both sides
    load: float = 0.0  # the host's 1-min load average when the row ended
    note: str = ""


@dataclass
class Memory:
    what: str
    peak: int
    idle: int | None = None
    target: int | None = None


@dataclass
class Report:
    rows: dict[str, Row] = field(default_factory=dict)
    local: dict[str, Row] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    qdisc: str = ""


@dataclass
class Env:
    """What every row uses: one run's processes, link, source and report."""

    procs: Procs
    link: Link
    loops: SourceLoops
    emap: ExtentMap
    folder: Path  # logs, sockets, the comparison's overlays
    store: Path  # what the receiving side writes: serve storage, images
    report: Report


# --- helpers -------------------------------------------------------------


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- (a) ferry -------------------------------------------------------------


def ferry_row(key: str, env: Env, side: str, host: str) -> Row:
    """``ferry serve`` on ``side``'s ``host``, ``ferry capture`` on the
    source side: across the shaped link, or both on one loopback."""
    procs, link, loops = env.procs, env.link, env.loops
    storage = env.store / f"storage-{key}"
    serve_name, capture_name = f"serve-{key}", f"capture-{key}"
    serve, pairing = start_serve(procs, link, side, host, storage, serve_name)
    disk = Path(loops.whole).name
    argv = [FERRY, "capture", "--server", pairing, "--loop", "--disks", disk]
    loops.drop_caches()
    before = link.tx_bytes()
    with Sampler() as sampler:
        usage = procs.measure(
            capture_name, link.exec("src", [*argv, "--name", "bench"]), RUN_TIMEOUT
        )
        wire = link.tx_bytes() - before
    row = Row(key, "ferry capture -> ferry serve (qcow2)", usage.wall, wire)
    row.cpu = usage.cpu + sampler.cpu_besides(usage)
    row.load = os.getloadavg()[0]
    procs.stop(serve_name)
    end_orphans(storage)
    server = sampler.peak(serve.pid)
    nbd = max((p.hwm for p in sampler.by_comm("qemu-nbd")), default=0)
    client = max(usage.maxrss, sampler.peak(usage.pid).hwm)
    for mem in (
        Memory(f"ferry capture ({key})", client, None, TARGETS["client_rss"]),
        Memory(
            f"ferry serve ({key}), whole process, 1 session",
            server.hwm,
            server.rss_first,
            TARGETS["server_rss"],
        ),
        Memory(f"qemu-nbd of ferry serve ({key})", nbd),
    ):
        known = env.report.memory.get(mem.what)
        if known is None or mem.peak > known.peak:
            env.report.memory[mem.what] = mem
    log = procs.log(capture_name)
    lines = log.read_text().splitlines()
    sent = [ln.split(": ", 1)[-1] for ln in lines if "bytes sent as" in ln]
    # "capture NAME complete in S s": the upload alone, without the start,
    # inventory and map that the wall time includes.
    upload = [ln.rsplit(" in ", 1)[-1] for ln in lines if " complete in " in ln]
    row.note = "; ".join(sent[-1:] + [f"upload {u}" for u in upload[-1:]])
    image = storage / "bench" / f"{disk}.qcow2"
    if usage.returncode != 0:
        env.report.failures.append(f"({key}) ferry capture failed:\n{tail(log)}")
    else:
        check_skip_zeroed(key, env, image)
    shutil.rmtree(storage, ignore_errors=True)
    return row


def start_serve(
    procs: Procs,
    link: Link,
    side: str,
    host: str,
    storage: Path,
    name: str,
    *,
    net_only: bool = False,
) -> tuple[subprocess.Popen, str]:
    """``ferry serve --no-convert`` on ``side``'s ``host``; returns the
    process and its pairing string. ``net_only``: in the namespace's
    network only (``Link.enter``), sharing the host's mounts."""
    argv = [FERRY, "serve", "--storage", storage, "--listen", f"{host}:{FERRY_PORT}"]
    argv.append("--no-convert")
    log = procs.log(name)
    # The log is appended to: with FERRY_BENCH_ROUNDS > 1, the lines of an
    # earlier round's server (its pairing, another certificate) are there.
    start = log.stat().st_size if log.exists() else 0
    serve = procs.start(
        name, link.enter(side, argv) if net_only else link.exec(side, argv)
    )

    def text() -> str:
        with open(log, errors="replace") as f:
            f.seek(start)
            return f.read()

    wait_for("ferry serve", lambda: "pairing: " in text() or serve.poll() is not None)
    lines = text().splitlines()
    pairing = next(
        (ln.split(" ", 1)[1] for ln in lines if ln.startswith("pairing: ")), ""
    )
    if not pairing:
        raise RuntimeError(f"ferry serve did not start:\n{tail(log)}")
    return serve, pairing


def end_orphans(storage: Path) -> None:
    """qemu-nbd processes a server left behind, by the pids it recorded."""
    for pid_file in storage.glob("*/*.nbd.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def check_skip_zeroed(key: str, env: Env, image: Path) -> None:
    """The image reads as the source with the SKIP areas zeroed: compared
    with a qcow2 overlay of the source whose SKIP ranges are zero clusters
    (no 4 GiB copy of the source)."""
    expected = env.folder / f"expected-{key}.qcow2"
    source = env.loops.disk.path
    made = run(
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", source, "-F", "raw", expected
    )
    made.check_returncode()
    # qemu-io takes one request of at most 2 GiB; 1 GiB steps stay under.
    script = "".join(
        f"write -z {pos} {min(GiB, ext.end - pos)}\n"
        for ext in env.emap.of_kind(ExtentKind.SKIP)
        for pos in range(ext.offset, ext.end, GiB)
    )
    zeroed = run("qemu-io", "-f", "qcow2", expected, input=script)
    if zeroed.returncode != 0 or "error" in zeroed.stdout.lower():
        env.report.failures.append(f"({key}) qemu-io: {zeroed.stdout[-500:]}")
    compare(key, env, ["-f", "qcow2", expected, "-F", "qcow2", image])
    expected.unlink(missing_ok=True)


def compare(key: str, env: Env, args: list) -> None:
    result = run("qemu-img", "compare", "-U", *args)
    if result.returncode != 0:
        env.report.failures.append(
            f"({key}) image differs from the source: "
            f"{(result.stdout + result.stderr).strip()[-500:]}"
        )


# --- (b) virt-p2v's data path ---------------------------------------------


def nbdcopy_row(key: str, env: Env, ssh: Ssh | None) -> Row:
    """nbdkit -> nbdcopy -> qemu-nbd qcow2. With ``ssh``, nbdkit listens on
    the source side's loopback and the receiver reaches it through an ssh
    tunnel, as virt-p2v does; without, all three meet on unix sockets."""
    procs, link, loops, folder = env.procs, env.link, env.loops, env.folder
    image = env.store / f"p2v-{key}.qcow2"
    made = run("qemu-img", "create", "-q", "-f", "qcow2", image, loops.disk.size)
    made.check_returncode()
    out_sock = folder / f"qemu-nbd-{key}.sock"
    # An earlier round's sockets stay behind (FERRY_BENCH_ROUNDS > 1).
    out_sock.unlink(missing_ok=True)
    # The options ferry serve gives its own qemu-nbd (backends/qcow2.py).
    qemu_nbd = ["qemu-nbd", "--format=qcow2", f"--socket={out_sock}", "--shared=8"]
    qemu_nbd += ["--persistent", "--cache=none", "--aio=threads", "--discard=unmap"]
    procs.start(f"qemu-nbd-{key}", link.exec("dst", [*qemu_nbd, image]))
    if ssh:
        listen = ["--ip-addr", "127.0.0.1", "--port", str(NBD_PORT)]
        source_uri = f"nbd://127.0.0.1:{NBD_PORT}"
    else:
        in_sock = folder / f"nbdkit-{key}.sock"
        in_sock.unlink(missing_ok=True)
        listen = ["--unix", str(in_sock)]
        source_uri = f"nbd+unix:///?socket={in_sock}"
    nbdkit = ["nbdkit", "--foreground", "--readonly", *listen]
    procs.start(f"nbdkit-{key}", link.exec("src", [*nbdkit, "file", loops.whole]))
    if ssh:
        forward = f"127.0.0.1:{NBD_PORT}:127.0.0.1:{NBD_PORT}"
        tunnel = ssh.command("-N", "-o", "ExitOnForwardFailure=yes", "-L", forward)
        procs.start(f"ssh-tunnel-{key}", tunnel)
    side = "dst" if ssh else "src"

    def reachable() -> bool:
        probe = link.exec(side, ["nbdinfo", "--size", source_uri])
        return run(*probe, timeout=10).returncode == 0

    wait_for("nbdkit", reachable)
    wait_for("qemu-nbd", out_sock.exists)
    loops.drop_caches()
    copy = ["nbdcopy", "--flush", source_uri, f"nbd+unix:///?socket={out_sock}"]
    before = link.tx_bytes()
    with Sampler() as sampler:
        usage = procs.measure(f"nbdcopy-{key}", link.exec(side, copy), RUN_TIMEOUT)
        wire = link.tx_bytes() - before
    what = "nbdkit -r file -> ssh -> nbdcopy -> qemu-nbd (qcow2)"
    if not ssh:
        what = "nbdkit -r file -> nbdcopy -> qemu-nbd (qcow2), unix sockets"
    row = Row(key, what, usage.wall, wire)
    row.cpu = usage.cpu + sampler.cpu_besides(usage)
    row.load = os.getloadavg()[0]
    for name in (f"ssh-tunnel-{key}", f"nbdkit-{key}", f"qemu-nbd-{key}"):
        procs.stop(name)
    if usage.returncode != 0:
        log = tail(procs.log(f"nbdcopy-{key}"))
        env.report.failures.append(f"({key}) nbdcopy failed:\n{log}")
    else:
        compare(key, env, ["-f", "raw", loops.disk.path, "-F", "qcow2", image])
    image.unlink(missing_ok=True)
    return row


# --- (c) Clonezilla's ------------------------------------------------------


def clonezilla_row(env: Env, ssh: Ssh) -> Row:
    """What ``ocs-sr -z9p savedisk`` sends for a GPT disk with one ext4:
    the bytes before the partition and the backup GPT, the partition
    through partclone, compressed by zstd on the source side; streamed over
    ssh into one file on the receiver side."""
    loops, folder = env.loops, env.folder
    size, first = loops.disk.size, loops.disk.part_offset
    out = env.store / "clonezilla.ptcl.zst"
    script = (
        "set -o pipefail; { "
        f"dd if={loops.whole} bs={first} count=1 status=none && "
        f"partclone.ext4 -q -z 10485760 -L {folder / 'partclone.log'} "
        f"-c -s {loops.part} -o - && "
        f"dd if={loops.whole} bs=512 skip={(size - GPT_BACKUP) // 512} status=none; "
        "} | zstd -T0 -q -c"
    )
    loops.drop_caches()
    before = env.link.tx_bytes()
    with open(out, "wb") as sink, Sampler() as sampler:
        argv = [*ssh.command(), f"bash -c '{script}'"]
        usage = env.procs.measure("clonezilla", argv, RUN_TIMEOUT, stdout=sink)
        wire = env.link.tx_bytes() - before
    row = Row("c", "partclone.ext4 -c -> zstd -T0 -> ssh -> file", usage.wall, wire)
    row.cpu = usage.cpu + sampler.cpu_besides(usage)
    row.load = os.getloadavg()[0]
    row.note = f"file of {out.stat().st_size / 1e6:.0f} MB"
    if usage.returncode != 0:
        log = tail(env.procs.log("clonezilla"))
        env.report.failures.append(f"(c) the Clonezilla pipeline failed:\n{log}")
    elif run("zstd", "-t", "-q", out).returncode != 0:
        env.report.failures.append("(c) the Clonezilla file is not whole zstd")
    out.unlink(missing_ok=True)
    return row


def limit_row(disk: SourceDisk) -> Row:
    what = "physical limit: used bytes after zstd -1 / 1 Gbit/s"
    row = Row("d", what, disk.used_zstd1 / RATE_BYTES, disk.used_zstd1)
    row.note = f"{disk.used_bytes / 1e6:.0f} MB used, {RATE_BYTES / 1e6:.0f} MB/s"
    return row


# --- the run ---------------------------------------------------------------


@pytest.fixture
def store(bench_dir: Path) -> Iterator[Path]:
    """The receiving side's storage (STORE), emptied after the run."""
    if STORE == "disk":
        yield bench_dir
        return
    if STORE != "ram":
        pytest.fail(f"FERRY_BENCH_STORE={STORE!r}: ram or disk")
    free = shutil.disk_usage("/dev/shm").free
    if free < STORE_NEEDS:
        pytest.fail(
            f"/dev/shm has {free / GiB:.1f} GiB free, the rows need "
            f"{STORE_NEEDS / GiB:.0f} GiB; FERRY_BENCH_STORE=disk writes to disk"
        )
    path = Path(tempfile.mkdtemp(prefix="ferry-bench-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_capture_bench(source_loops, procs, link, bench_dir, store):
    emap = map_disk(source_loops.whole)
    env = Env(procs, link, source_loops, emap, bench_dir, store, Report())
    rows, local = env.report.rows, env.report.local
    try:
        ssh = Ssh(procs, link, bench_dir / "ssh")
        for _ in range(ROUNDS):
            link.shape()
            if "a" in ROWS:
                keep_fastest(rows, ferry_row("a", env, "dst", link.dst_addr))
            if "b" in ROWS:
                keep_fastest(rows, nbdcopy_row("b", env, ssh))
            if "c" in ROWS:
                keep_fastest(rows, clonezilla_row(env, ssh))
            env.report.qdisc = link.qdisc_stats()
            # Unshaped: both ends on the source namespace's loopback.
            if "lo-ferry" in ROWS:
                keep_fastest(local, ferry_row("lo-ferry", env, "src", "127.0.0.1"))
            if "lo-nbdcopy" in ROWS:
                keep_fastest(local, nbdcopy_row("lo-nbdcopy", env, None))
        rows["d"] = limit_row(source_loops.disk)
    finally:
        text = render(env)
        print("\n" + text)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text)
    assert not env.report.failures, "\n\n".join(env.report.failures)


# --- the tables ------------------------------------------------------------


def render(env: Env) -> str:
    disk, report, emap = env.loops.disk, env.report, env.emap
    rows = report.rows
    out = [
        "# ferry capture bench",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs shared by both ends, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        + (f"; fastest of {ROUNDS} rounds per row." if ROUNDS > 1 else "."),
        "",
        f"Source: {disk.size / GiB:.0f} GiB GPT disk, one ext4; "
        f"{(disk.live_text + disk.live_random) / GiB:.2f} GiB live files "
        f"(half text, half random), {disk.deleted_random / GiB:.2f} GiB deleted "
        f"random files. ferry's map: {emap.bytes_of(ExtentKind.DATA) / 1e6:.0f} MB "
        f"DATA in {len(list(emap.of_kind(ExtentKind.DATA)))} extents, "
        f"{emap.bytes_of(ExtentKind.SKIP) / 1e6:.0f} MB SKIP; after zstd -1 the "
        f"used bytes are {disk.used_zstd1 / 1e6:.0f} MB.",
        "",
        f"Link: veth between two network namespaces, tc tbf rate {RATE} burst "
        f"{BURST} latency {LATENCY} on both ends. Bytes on the wire: tx_bytes "
        "of both veth ends (MB = 10^6 bytes). The receiving side writes to "
        + (
            "RAM (/dev/shm; FERRY_BENCH_STORE=disk for this VM's disk)."
            if STORE == "ram"
            else "this VM's disk (FERRY_BENCH_STORE=disk)."
        ),
        "",
        "| row | what | wall s | MB on the wire | x (b) | x (d) | CPU s | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    b, d = rows.get("b"), rows.get("d")
    for row in rows.values():
        vs_b = f"{row.wall / b.wall:.2f}" if b else "-"
        vs_d = f"{row.wall / d.wall:.2f}" if d else "-"
        cpu = f"{row.cpu:.1f}" if row.key != "d" else "-"
        load = f"{row.load:.1f}" if row.key != "d" else "-"
        out.append(
            f"| ({row.key}) | {row.what} | {row.wall:.1f} | {row.wire / 1e6:.0f} "
            f"| {vs_b} | {vs_d} | {cpu} | {load} |"
        )
    notes = [f"- ({r.key}) {r.note}" for r in rows.values() if r.note]
    out += ["", *notes]
    busiest = max((r.load for r in [*rows.values(), *report.local.values()]), default=0)
    if busiest > (os.cpu_count() or 1):
        out += [
            "",
            f"WARNING: the machine was busy (load up to {busiest:.1f} on "
            f"{os.cpu_count()} CPUs, other work than this bench): every row ran "
            "slower than it would alone, the CPU-heavy ones most. The CPU column "
            "is less affected than the wall times.",
        ]
    out += ["", "Targets (issue 3):", ""]
    a = rows.get("a")
    for other, label in TIME_TARGETS.items():
        if a and other in rows:
            ratio, limit = a.wall / rows[other].wall, TARGETS[f"time_vs_{other}"]
            out.append(f"- {verdict(ratio <= limit)} (a) {label}: {ratio:.2f}")
    for mem in report.memory.values():
        if mem.target:
            ok = mem.peak < mem.target
            out.append(
                f"- {verdict(ok)} {mem.what} < {mem.target // MiB} MiB: "
                f"{mem.peak / MiB:.0f} MiB"
            )
    out += render_local(env) + render_memory(report)
    if report.qdisc:
        out += ["", "tc after the shaped rows:", "", "```", report.qdisc, "```"]
    if report.failures:
        out += ["", "FAILED (these rows produced wrong or no images):", ""]
        out += [f"- {f}" for f in report.failures]
    return "\n".join(out) + "\n"


def render_local(env: Env) -> list[str]:
    local, disk = env.report.local, env.loops.disk
    if not local:
        return []
    out = [
        "",
        "Unshaped, on one namespace's loopback (TLS for ferry, unix sockets for "
        "nbdcopy); CPU is every process of the row, both ends:",
        "",
        "| tool | wall s | disk MB/s | MB read | read MB/s | CPU s | CPU s/GiB read "
        "| CPU s/GiB of disk |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    read = {"lo-ferry": env.emap.bytes_of(ExtentKind.DATA), "lo-nbdcopy": disk.size}
    for name, row in local.items():
        out.append(
            f"| {name.removeprefix('lo-')} | {row.wall:.1f} "
            f"| {disk.size / row.wall / 1e6:.0f} "
            f"| {read[name] / 1e6:.0f} | {read[name] / row.wall / 1e6:.0f} "
            f"| {row.cpu:.1f} | {row.cpu / (read[name] / GiB):.2f} "
            f"| {row.cpu / (disk.size / GiB):.2f} |"
        )
    return out


def render_memory(report: Report) -> list[str]:
    out = [
        "",
        "Peak resident memory (VmHWM, sampled from /proc; the client's also from "
        "wait4's ru_maxrss):",
        "",
        "| process | peak MiB | idle MiB | target MiB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for mem in report.memory.values():
        idle = f"{mem.idle / MiB:.0f}" if mem.idle is not None else "-"
        target = f"< {mem.target // MiB}" if mem.target else "-"
        out.append(f"| {mem.what} | {mem.peak / MiB:.0f} | {idle} | {target} |")
    return out
