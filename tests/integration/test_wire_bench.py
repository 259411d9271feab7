"""Throughput, CPU and memory of the wire on loopback (``-m bench`` only).

Client and server run as separate processes on this machine, TLS on
127.0.0.1, the server writing qcow2 through qemu-nbd into ``tmp_path``.
Prints one table; asserts only the memory budgets of issue 3 (client under
300 MiB, server under 200 MiB per session), since throughput depends on what
else the machine runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import test_wire_support as support
from test_wire_support import D, MiB, write_source

serve, pairing = support.serve, support.pairing  # fixtures

GiB = 1 << 30
CLIENT = """
import json, resource, sys, time
from converters.extents import ExtentMap
from converters.wire.client import DiskSource, UploadOptions, upload
pairing, session, path, compress = sys.argv[1:5]
emap = ExtentMap.from_json(json.load(open(path + ".map")))
start = time.monotonic()
result = upload(pairing, session, [DiskSource("sda", path, emap)],
                options=UploadOptions(compress=compress))
wall = time.monotonic() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
stats = result.disks["sda"]
print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss": usage.ru_maxrss * 1024, "sent": stats.data_sent,
                  "wire": stats.wire_bytes}))
"""


def _cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children (qemu-nbd)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.bench
@pytest.mark.parametrize(
    ("data", "compress"),
    [("random", "none"), ("random", "auto"), ("half text", "auto")],
)
def test_wire_throughput_on_loopback(tmp_path, serve, pairing, data, compress):
    source = tmp_path / "sda.raw"
    if data == "random":
        layout = [(32 * MiB, D, "random")] * 32
    else:
        layout = [(32 * MiB, D, kind) for kind in ("random", "text") * 16]
    emap = write_source(source, layout)
    (tmp_path / "sda.raw.map").write_text(json.dumps(emap.to_json()))
    server_cpu = _cpu(serve.proc.pid)
    session = f"bench-{compress}-{data.replace(' ', '')}"

    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(pairing), session, source, compress],
        check=True,
        capture_output=True,
        text=True,
        cwd=support.REPO,
    )

    client = json.loads(out.stdout)
    server_cpu = _cpu(serve.proc.pid) - server_cpu
    server_rss = _hwm(serve.proc.pid)
    gib = client["sent"] / GiB
    rate = client["sent"] / client["wall"] / 1e6
    print(
        f"\nwire bench {data:9} {compress:4}: {rate:6.0f} MB/s payload,"
        f" {client['wall']:5.1f} s, wire {client['wire'] / 1e6:6.0f} MB,"
        f" CPU s/GiB client {client['cpu'] / gib:4.2f} server+qemu-nbd"
        f" {server_cpu / gib:4.2f}, peak RSS client {client['rss'] / MiB:4.0f} MiB"
        f" server {server_rss / MiB:4.0f} MiB, load {os.getloadavg()[0]:.1f}"
    )
    assert client["rss"] < 300 * MiB
    assert server_rss < 200 * MiB
