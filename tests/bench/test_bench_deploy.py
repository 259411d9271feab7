"""``make bench``: V2P deploy against the tools a technician has today.

One run, one table (issue 7, item 5). The image (deploy_image.py: 6 GiB
GPT disk, 2 GiB of files, half text, half random) is served from one network
namespace; the target, a loop device over a fresh sparse file of the
image's size, is written from the other, across a veth pair shaped to
1 Gbit/s (netns.py):

(a) ``ferry serve`` -> ``ferry deploy --no-fixups --no-grow`` (TLS, zstd
    where it pays, read-back verification);
(b) ``qemu-img convert -W`` reading the qcow2 over HTTP (QEMU's curl
    driver, Range requests to aiohttp's FileResponse) onto the device;
(c) ``bmaptool copy`` of the zstd-compressed raw image over HTTP, with its
    bmap (it checks the bmap's checksums as it writes);
(d) the physical limit: the image's allocated bytes after ``zstd -1`` at the
    link rate.

Every row's target is compared with the image afterwards; a row whose disk
differs is reported as failed. The bench does not fail on speed.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bench.bench_disk import loop
from tests.bench.conftest import Procs, Sampler, keep_fastest, verdict
from tests.bench.deploy_image import DeployImage, deploy_image
from tests.bench.netns import BURST, LATENCY, RATE, RATE_BYTES, Link, run, wait_for

pytestmark = [pytest.mark.bench, pytest.mark.timeout(5400)]

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "build" / "bench" / "deploy.md"
FERRY = Path(sys.executable).with_name("ferry")
MiB, GiB = 1 << 20, 1 << 30
FERRY_PORT, HTTP_PORT = 7421, 8421
RUN_TIMEOUT = 1200
ROUNDS = int(os.environ.get("FERRY_BENCH_ROUNDS", "1"))
ROWS = set(os.environ.get("FERRY_BENCH_DEPLOY_ROWS", "a,b,c").split(","))
TARGETS = {"vs_peer": 1.0, "vs_d": 1.3, "rss": 300 * MiB}


@dataclass
class Row:
    key: str
    what: str
    wall: float
    wire: int
    cpu: float = 0.0
    load: float = 0.0
    note: str = ""
    cpu_by: str = ""  # CPU seconds per process name, where the CPU went


@dataclass
class Report:
    rows: dict[str, Row] = field(default_factory=dict)
    rss: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class Env:
    procs: Procs
    link: Link
    image: DeployImage
    folder: Path
    report: Report


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def measured(env: Env, key: str, what: str, argv: list, target: Path) -> Row:
    """Runs ``argv`` on the receiving side onto a fresh target of the image's
    size (``{dev}`` in argv is its loop device), then compares the target
    with the image."""
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(env.image.size)
    with loop(target, read_only=False) as dev:
        argv = [str(a).replace("{dev}", dev).replace("{name}", Path(dev).name)
                for a in argv]  # fmt: skip
        before = env.link.tx_bytes()
        with Sampler() as sampler:
            usage = env.procs.measure(
                key, env.link.exec("dst", argv), RUN_TIMEOUT, cwd=REPO
            )
            wire = env.link.tx_bytes() - before
    row = Row(key, what, usage.wall, wire)
    row.cpu = usage.cpu + sampler.cpu_besides(usage)
    row.load = os.getloadavg()[0]
    row.cpu_by = cpu_by_process(sampler, usage)
    if key == "a":
        env.report.rss = max(env.report.rss, usage.maxrss, sampler.peak(usage.pid).hwm)
    if usage.returncode != 0:
        env.report.failures.append(f"({key}) failed:\n{tail(env.procs.log(key))}")
    else:
        compared = run(
            "qemu-img", "compare", "-f", "qcow2", env.image.qcow2,
            "-F", "raw", target,
        )  # fmt: skip
        if compared.returncode != 0:
            env.report.failures.append(
                f"({key}) the disk differs from the image: "
                f"{(compared.stdout + compared.stderr).strip()[-300:]}"
            )
    target.unlink(missing_ok=True)
    return row


def cpu_by_process(sampler: Sampler, usage) -> str:
    """CPU seconds of the row by process name: the measured command's own
    (from wait4) and every other process's growth while it ran."""
    by: dict[str, float] = {}
    skip = sampler.subtree(usage.pid) | {os.getpid()}
    for pid, peak in sampler.seen.items():
        if pid not in skip and peak.cpu_used > 0.05:
            by[peak.comm] = by.get(peak.comm, 0.0) + peak.cpu_used
    # The measured command apart: ferry deploy and ferry serve share a name.
    by[f"{sampler.peak(usage.pid).comm} (the measured command)"] = usage.cpu
    return ", ".join(f"{name} {cpu:.1f}" for name, cpu in sorted(by.items()))


def ferry_row(env: Env, pairing: str) -> Row:
    argv = [
        FERRY, "deploy", "--server", pairing, "--image", "bench",
        "--target", "{dev}", "--confirm", "{name}", "--no-fixups", "--no-grow",
    ]  # fmt: skip
    what = "ferry serve -> ferry deploy (verified)"
    row = measured(env, "a", what, argv, env.folder / "target-a.raw")
    lines = tail(env.procs.log("a"), 40).splitlines()
    row.note = next((ln for ln in lines if "verified by read-back" in ln), "")
    return row


def qemu_img_row(env: Env, base: str) -> Row:
    argv = [
        "qemu-img", "convert", "-W", "-n", "-f", "qcow2",
        f"{base}/disk.qcow2", "-O", "raw", "{dev}",
    ]  # fmt: skip
    what = "qemu-img convert -W, qcow2 over HTTP (curl driver)"
    return measured(env, "b", what, argv, env.folder / "target-b.raw")


def bmaptool_row(env: Env, base: str) -> Row:
    argv = [
        "bmaptool", "copy", "--bmap", env.image.bmap,
        f"{base}/disk.raw.zst", "{dev}",
    ]  # fmt: skip
    what = "bmaptool copy --bmap, raw.zst over HTTP"
    row = measured(env, "c", what, argv, env.folder / "target-c.raw")
    row.note = f"file of {env.image.raw_zst.stat().st_size / 1e6:.0f} MB (zstd -3)"
    return row


def limit_row(image: DeployImage) -> Row:
    what = "physical limit: allocated bytes after zstd -1 / 1 Gbit/s"
    row = Row("d", what, image.allocated_zstd1 / RATE_BYTES, image.allocated_zstd1)
    row.note = f"{image.allocated / 1e6:.0f} MB allocated, {RATE_BYTES / 1e6:.0f} MB/s"
    return row


def start_servers(env: Env) -> tuple[str, str]:
    """ferry serve and the HTTP server, both on the sending side."""
    procs, link = env.procs, env.link
    storage = env.folder / "storage"
    (storage / "bench").mkdir(parents=True)
    (storage / "bench" / "sda.qcow2").symlink_to(env.image.qcow2)
    (storage / "bench" / "inventory.json").write_text('{"hostname": "bench"}')
    listen = f"{link.src_addr}:{FERRY_PORT}"
    serve = procs.start(
        "serve",
        link.exec(
            "src",
            [FERRY, "serve", "--storage", storage, "--listen", listen, "--no-convert"],
        ),
    )
    log = procs.log("serve")
    wait_for(
        "ferry serve",
        lambda: "pairing: " in log.read_text() or serve.poll() is not None,
    )
    pairing = next(
        (ln.split(" ", 1)[1] for ln in log.read_text().splitlines()
         if ln.startswith("pairing: ")),
        "",
    )  # fmt: skip
    if not pairing:
        raise RuntimeError(f"ferry serve did not start:\n{tail(log)}")
    http = [sys.executable, "-m", "tests.bench.static_http", env.image.folder]
    procs.start("http", link.exec("src", [*http, link.src_addr, HTTP_PORT]), cwd=REPO)
    base = f"http://{link.src_addr}:{HTTP_PORT}"
    wait_for(
        "http server",
        lambda: (
            run(
                *link.exec("dst", ["curl", "-sfI", f"{base}/disk.bmap"]), timeout=10
            ).returncode
            == 0
        ),
    )
    return pairing, base


def test_deploy_bench(procs, link, bench_dir):
    image = deploy_image()
    env = Env(procs, link, image, bench_dir, Report())
    rows = env.report.rows
    try:
        pairing, base = start_servers(env)
        link.shape()
        for _ in range(ROUNDS):
            if "a" in ROWS:
                keep_fastest(rows, ferry_row(env, pairing))
            if "b" in ROWS:
                keep_fastest(rows, qemu_img_row(env, base))
            if "c" in ROWS:
                keep_fastest(rows, bmaptool_row(env, base))
        rows["d"] = limit_row(image)
    finally:
        text = render(env)
        print("\n" + text)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text)
    assert not env.report.failures, "\n\n".join(env.report.failures)


def render(env: Env) -> str:
    image, report, rows = env.image, env.report, env.report.rows
    out = [
        "# ferry deploy bench",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs shared by both ends, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        + (f"; fastest of {ROUNDS} rounds per row." if ROUNDS > 1 else "."),
        "",
        f"Image: {image.size / GiB:.0f} GiB GPT disk, one ext4 with 2 GiB of "
        f"files (half text, half random); {image.allocated / 1e6:.0f} MB "
        f"allocated, {image.allocated_zstd1 / 1e6:.0f} MB after zstd -1. Target: "
        "a loop device over a fresh sparse file of the image's size.",
        "",
        f"Link: veth between two network namespaces, tc tbf rate {RATE} burst "
        f"{BURST} latency {LATENCY} on both ends. Bytes on the wire: tx_bytes "
        "of both veth ends (MB = 10^6 bytes).",
        "",
        "| row | what | wall s | MB on the wire | x faster of (b)/(c) | x (d) "
        "| CPU s | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    peers = [rows[k] for k in ("b", "c") if k in rows]
    peer = min(peers, key=lambda r: r.wall) if peers else None
    d = rows.get("d")
    for row in rows.values():
        vs_peer = f"{row.wall / peer.wall:.2f}" if peer else "-"
        vs_d = f"{row.wall / d.wall:.2f}" if d else "-"
        cpu = f"{row.cpu:.1f}" if row.key != "d" else "-"
        load = f"{row.load:.1f}" if row.key != "d" else "-"
        out.append(
            f"| ({row.key}) | {row.what} | {row.wall:.1f} | {row.wire / 1e6:.0f} "
            f"| {vs_peer} | {vs_d} | {cpu} | {load} |"
        )
    out += ["", *[f"- ({r.key}) {r.note}" for r in rows.values() if r.note]]
    out += [
        f"- ({r.key}) CPU s by process: {r.cpu_by}" for r in rows.values() if r.cpu_by
    ]
    out += ["", "Targets (issue 7):", ""]
    a = rows.get("a")
    if a and peer:
        ratio = a.wall / peer.wall
        out.append(
            f"- {verdict(ratio <= TARGETS['vs_peer'])} (a) no slower than the "
            f"faster of (b) and (c), ({peer.key}): {ratio:.2f}"
        )
    if a and d:
        ratio = a.wall / d.wall
        out.append(
            f"- {verdict(ratio <= TARGETS['vs_d'])} (a) within 1.3 x of (d): "
            f"{ratio:.2f}"
        )
    if report.rss:
        out.append(
            f"- {verdict(report.rss < TARGETS['rss'])} ferry deploy peak resident "
            f"memory < 300 MiB: {report.rss / MiB:.0f} MiB"
        )
    if report.failures:
        out += ["", "FAILED (these rows wrote wrong or no disks):", ""]
        out += [f"- {f}" for f in report.failures]
    return "\n".join(out) + "\n"
