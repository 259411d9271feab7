"""The bench's source disk: what a used machine's disk looks like.

A raw file with a GPT and one ext4 partition that holds 1.25 GiB of live
files, half text (compresses about 3x with zstd -1) and half random
(compresses not at all), and whose free space is full of 2.25 GiB of deleted
random files: the bytes a full-disk tool copies and a used-block tool skips.

It is built with loop devices (``losetup --offset --sizelimit``, since this
kernel makes no partition devices for loops), mkfs.ext4, a mount, and plain
file writes, then cached under ``~/.cache/ferry/bench/source-KEY/`` with the
facts the table needs (used bytes, their zstd -1 size), KEY being the hash
of ``RECIPE``: change the recipe or the code that follows it, bump
``version``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from converters import cache
from converters.disk_map import map_disk
from converters.extents import ExtentKind

MiB = 1 << 20
GiB = 1 << 30
SECTOR = 512

RECIPE = {
    "version": 1,
    "size": 4 * GiB,
    "label": "gpt",
    "first_sector": 2048,
    "fs": "ext4",
    # Written first, then deleted once the live files sit beside them: their
    # blocks stay full of random bytes the filesystem calls free.
    "deleted_random": 2304 * MiB,
    "live_text": 640 * MiB,
    "live_random": 640 * MiB,
    "seed": 3,
}
# Files of these sizes, in turn, make up each kind of live data: many small
# files and a few large ones, as on a system disk.
FILE_SIZES = [16 << 10, 64 << 10, 256 << 10, 1 * MiB, 4 * MiB, 16 * MiB, 48 * MiB]
WRITE_STEP = 8 * MiB


@dataclass(frozen=True)
class SourceDisk:
    path: Path
    size: int
    part_offset: int
    part_length: int
    used_bytes: int  # DATA of ferry's map: used blocks plus the GPT areas
    used_zstd1: int  # those bytes through zstd -1, as one stream
    skip_bytes: int
    live_text: int
    live_random: int
    deleted_random: int

    @classmethod
    def load(cls, folder: Path) -> SourceDisk:
        facts = json.loads((folder / "facts.json").read_text())
        return cls(path=folder / "disk.raw", **facts)


def source_disk() -> SourceDisk:
    """The cached disk, built first if the recipe changed or none exists."""
    base = cache.root() / "bench"
    base.mkdir(parents=True, exist_ok=True)
    key = cache.recipe_key("bench-source", RECIPE)
    folder = base / f"source-{key}"
    with open(base / "source.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "facts.json").exists():
            cache.prune(base, "source-", keep=folder)
            _build(folder)
        cache.prune(base, "source-", keep=folder)
    return SourceDisk.load(folder)


def _run(*argv: str, **kw) -> str:
    kw.setdefault("timeout", 300)
    return subprocess.run(
        list(argv), check=True, capture_output=True, text=True, **kw
    ).stdout


@contextlib.contextmanager
def loop(path: Path, *, offset: int = 0, length: int = 0, read_only=True):
    """A loop device over ``path`` (or a window of it), detached on exit."""
    args = ["losetup", "--find", "--show"]
    if read_only:
        args += ["--read-only"]
    # Reads and writes bypass the page cache of the backing file, as they
    # would a real disk's: each run reads the disk, as a live system reads
    # its own disk once, and a write is on the file when the device says so
    # (buffered, a flush of the device wrote back everything written since
    # the last one while the loop device held every other request).
    args += ["--direct-io=on"]
    if offset:
        args += ["--offset", str(offset)]
    if length:
        args += ["--sizelimit", str(length)]
    dev = _run(*args, str(path)).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)


def _build(folder: Path) -> None:
    work = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    disk = work / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(RECIPE["size"])
    _run(
        "sfdisk",
        "--quiet",
        str(disk),
        input=f"label: {RECIPE['label']}\nstart={RECIPE['first_sector']}, type=linux\n",
    )
    (part,) = json.loads(_run("sfdisk", "--json", str(disk)))["partitiontable"][
        "partitions"
    ]
    offset, length = part["start"] * SECTOR, part["size"] * SECTOR
    written = _fill(disk, offset, length)
    with loop(disk, offset=offset, length=length) as dev:
        _run("e2fsck", "-fn", dev)
    facts = _facts(disk, offset, length, written)
    (work / "facts.json").write_text(json.dumps(facts, indent=1))
    work.rename(folder)


def _fill(disk: Path, offset: int, length: int) -> dict:
    rng = random.Random(RECIPE["seed"])
    with (
        loop(disk, offset=offset, length=length, read_only=False) as dev,
        tempfile.TemporaryDirectory(prefix="ferry-bench-mnt-") as mnt,
    ):
        # No lazy init: the inode tables and journal are written now, not by
        # a kernel thread after the mount, so the disk is what mkfs left.
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "ferry-bench",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            dev,
        )
        # nodiscard: deleting must leave the bytes on the disk (a discard
        # would punch holes in the raw file and the deleted data would go).
        _run("mount", "-o", "nodiscard", dev, mnt)
        try:
            root = Path(mnt)
            junk = _write_files(root / "junk", "deleted_random", rng)
            os.sync()
            text = _write_files(root / "home", "live_text", rng)
            rand = _write_files(root / "home", "live_random", rng)
            os.sync()
            shutil.rmtree(root / "junk")
            os.sync()
        finally:
            _run("umount", mnt)
    return {"deleted_random": junk, "live_text": text, "live_random": rand}


def _write_files(folder: Path, what: str, rng: random.Random) -> int:
    """``RECIPE[what]`` bytes of files in ``folder``; text or random by name."""
    total, kind = RECIPE[what], what.rsplit("_", 1)[1]
    folder.mkdir(parents=True, exist_ok=True)
    source = _text_stream(rng) if kind == "text" else _random_stream(rng)
    written = 0
    for i, size in enumerate(itertools.cycle(FILE_SIZES)):
        size = min(size, total - written)
        if size <= 0:
            break
        with open(folder / f"{kind}-{i:05d}", "wb") as f:
            left = size
            while left:
                piece = source(min(left, WRITE_STEP))
                f.write(piece)
                left -= len(piece)
        written += size
    return written


def _random_stream(rng: random.Random):
    """Random bytes from AES-CTR keyed by the seed: 10x faster than
    ``Random.randbytes`` and as incompressible."""
    enc = Cipher(algorithms.AES(rng.randbytes(32)), modes.CTR(bytes(16))).encryptor()
    return lambda n: enc.update(bytes(n))


def _text_stream(rng: random.Random):
    """Lines of words in a Zipf-like mix, drawn at random from a pool of
    8 MiB of them: generated once, so 640 MiB take seconds, not minutes; a
    pool much larger than zstd -1's 512 KiB window, so repeats of whole
    lines rarely help the compressor (it gets about 3x, like system text)."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    freq = [127, 91, 82, 75, 70, 67, 63, 61, 60, 43, 40, 28, 28]
    freq += [24, 24, 22, 20, 20, 19, 15, 10, 8, 2, 2, 1, 1]
    words = [
        "".join(rng.choices(letters, freq, k=rng.randint(2, 11))) for _ in range(20000)
    ]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))
    lines, size = [], 0
    while size < 8 * MiB:
        line = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(4, 16)))
        line = line.capitalize() + ".\n"
        lines.append(line.encode())
        size += len(line)

    def take(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += b"".join(rng.choices(lines, k=2048))
        return bytes(out[:n])

    return take


def _facts(disk: Path, offset: int, length: int, written: dict) -> dict:
    with loop(disk) as dev:
        emap = map_disk(dev)
        used = list(emap.of_kind(ExtentKind.DATA))
        zstd1 = zstd1_size(_used_chunks(dev, used))
    return {
        "size": RECIPE["size"],
        "part_offset": offset,
        "part_length": length,
        "used_bytes": sum(e.length for e in used),
        "used_zstd1": zstd1,
        "skip_bytes": emap.bytes_of(ExtentKind.SKIP),
        **written,
    }


def _used_chunks(dev: str, extents) -> Iterator[bytes]:
    with open(dev, "rb", buffering=0) as f:
        for ext in extents:
            for pos in range(ext.offset, ext.end, WRITE_STEP):
                yield os.pread(f.fileno(), min(WRITE_STEP, ext.end - pos), pos)


def zstd1_size(chunks: Iterable[bytes]) -> int:
    """What ``zstd -1`` makes of ``chunks``: the physical limit's bytes,
    counted with the very tool the limit is defined by."""
    proc = subprocess.Popen(
        ["zstd", "-1", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    size = 0

    def count() -> None:
        nonlocal size
        while chunk := proc.stdout.read(MiB):
            size += len(chunk)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        for chunk in chunks:
            proc.stdin.write(chunk)
    finally:
        proc.stdin.close()
        counter.join(timeout=600)
    if proc.wait(timeout=60) != 0:
        raise RuntimeError("zstd -1 failed")
    return size
