"""The deploy bench's image: what a captured system disk looks like to V2P.

A 6 GiB GPT disk with one ext4 partition holding 2 GiB of live files, half
text (zstd -1 gets about 3x) and half random (incompressible); the rest of
the filesystem was never written, so the raw file is sparse there. From it,
made once and cached under ``~/.cache/ferry/bench/deploy-KEY/`` (KEY: the
hash of ``RECIPE``; bump ``version`` when the code below changes):

- ``disk.qcow2``: what ``ferry serve`` offers and ``qemu-img convert`` reads;
- ``disk.raw.zst`` and ``disk.bmap``: what a bmaptool user publishes
  (``bmaptool create`` of the raw disk, the raw disk compressed);
- ``facts.json``: allocated bytes and their size after ``zstd -1``.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from converters import cache
from tests.bench.bench_disk import loop, zstd1_size

MiB = 1 << 20
GiB = 1 << 30
SECTOR = 512
STEP = 8 * MiB

RECIPE = {
    "version": 1,
    "size": 6 * GiB,
    "first_sector": 2048,
    "live_text": 1 * GiB,
    "live_random": 1 * GiB,
    "file_size": 32 * MiB,
    "seed": 7,
}


@dataclass(frozen=True)
class DeployImage:
    folder: Path
    size: int
    allocated: int  # DATA of the raw disk (SEEK_DATA), what must be written
    allocated_zstd1: int  # those bytes through zstd -1 as one stream

    @property
    def qcow2(self) -> Path:
        return self.folder / "disk.qcow2"

    @property
    def raw_zst(self) -> Path:
        return self.folder / "disk.raw.zst"

    @property
    def bmap(self) -> Path:
        return self.folder / "disk.bmap"


def deploy_image() -> DeployImage:
    base = cache.root() / "bench"
    base.mkdir(parents=True, exist_ok=True)
    folder = base / f"deploy-{cache.recipe_key('bench-deploy', RECIPE)}"
    with open(base / "deploy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "facts.json").exists():
            cache.prune(base, "deploy-", keep=folder)
            _build(folder)
    facts = json.loads((folder / "facts.json").read_text())
    return DeployImage(folder, **facts)


def _run(*argv, **kw) -> str:
    kw.setdefault("timeout", 900)
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, **kw
    ).stdout


def _build(folder: Path) -> None:
    work = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(RECIPE["size"])
    _run(
        "sfdisk", "--quiet", raw, input=f"label: gpt\nstart={RECIPE['first_sector']}\n"
    )
    (part,) = json.loads(_run("sfdisk", "--json", raw))["partitiontable"]["partitions"]
    offset, length = part["start"] * SECTOR, part["size"] * SECTOR
    rng = random.Random(RECIPE["seed"])
    with (
        loop(raw, offset=offset, length=length, read_only=False) as dev,
        tempfile.TemporaryDirectory(prefix="ferry-bench-mnt-") as mnt,
    ):
        _run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev)
        _run("mount", dev, mnt)
        try:
            _files(Path(mnt) / "text", RECIPE["live_text"], _text(rng))
            _files(Path(mnt) / "random", RECIPE["live_random"], _random(rng))
        finally:
            _run("umount", mnt)
    _run(
        "qemu-img",
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw,
        work / "disk.qcow2",
    )
    _run("bmaptool", "-q", "create", "-o", work / "disk.bmap", raw)
    _run("zstd", "-q", "-T0", "-3", raw, "-o", work / "disk.raw.zst")
    allocated, packed = _allocated_zstd1(raw)
    facts = {"size": RECIPE["size"], "allocated": allocated, "allocated_zstd1": packed}
    (work / "facts.json").write_text(json.dumps(facts, indent=1))
    raw.unlink()
    work.rename(folder)


def _files(folder: Path, total: int, stream) -> None:
    folder.mkdir()
    for i in range(total // RECIPE["file_size"]):
        with open(folder / f"f{i:04d}", "wb") as f:
            for _ in range(RECIPE["file_size"] // STEP):
                f.write(stream(STEP))
    os.sync()


def _random(rng: random.Random):
    enc = Cipher(algorithms.AES(rng.randbytes(32)), modes.CTR(bytes(16))).encryptor()
    return lambda n: enc.update(bytes(n))


def _text(rng: random.Random):
    """Lines of made-up words drawn from a 4 MiB pool, whole lines at random:
    the pool is far larger than zstd -1's window, so it gets the ratio of
    words, not of repeats."""
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(30000)]
    # Zipf-like: cumulative weights, computed once (choices() would sum
    # 30000 weights on every call).
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))
    lines, size = [], 0
    while size < 4 * MiB:
        line = (
            " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(4, 14))) + "\n"
        )
        lines.append(line.encode())
        size += len(line)

    def take(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += b"".join(rng.choices(lines, k=4096))
        return bytes(out[:n])

    return take


def _allocated_zstd1(raw: Path) -> tuple[int, int]:
    """The raw file's data (SEEK_DATA/SEEK_HOLE) and its size after zstd -1."""
    allocated = 0

    def data() -> Iterator[bytes]:
        nonlocal allocated
        fd = os.open(raw, os.O_RDONLY)
        try:
            size, pos = os.fstat(fd).st_size, 0
            while pos < size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                for at in range(start, end, STEP):
                    chunk = os.pread(fd, min(STEP, end - at), at)
                    allocated += len(chunk)
                    yield chunk
                pos = end
        finally:
            os.close(fd)

    packed = zstd1_size(data())
    return allocated, packed
