"""Fixtures of the TUI tests: small disks with real ext4 filesystems on
loop devices (detached by device in teardown), and helpers that wait for
the app without sleeping longer than needed.

The `serve` and `pairing` fixtures (a real ferry serve on loopback) come
from tests/integration/test_wire_support.py through tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests (the Textual pilot is async) in a fresh event
    loop, without a plugin for it."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True


@dataclass(frozen=True)
class LoopDisk:
    dev: str  # /dev/loopN
    image: Path

    @property
    def name(self) -> str:
        return os.path.basename(self.dev)

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.dev, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        return h.hexdigest()


def make_image(path: Path, size_mib: int, fill_mib: int, partitioned: bool) -> Path:
    """A raw disk with ext4 holding ``fill_mib`` of random data: on the
    whole disk, or in one MBR partition at 1 MiB (the layout installers
    make)."""
    src = path.with_suffix(".src")
    src.mkdir()
    if fill_mib:
        (src / "blob").write_bytes(os.urandom(fill_mib * MiB))
    (src / "hello.txt").write_text("ferry tui test\n")
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", path.stem[:16], "-d", str(src)]
    if partitioned:
        subprocess.run(
            ["sfdisk", "-q", str(path)],
            input="label: dos\n2048,,83\n",
            text=True,
            check=True,
        )
        mkfs += ["-E", "offset=1048576", str(path), f"{size_mib - 1}M"]
    else:
        mkfs.append(str(path))
    subprocess.run(mkfs, check=True, capture_output=True)
    return path


@pytest.fixture
def loop_disks(tmp_path):
    """make(name, size_mib=64, fill_mib=8, partitioned=False) -> LoopDisk."""
    attached: list[str] = []

    def make(name, size_mib=64, fill_mib=8, partitioned=False, read_only=False):
        image = make_image(tmp_path / f"{name}.raw", size_mib, fill_mib, partitioned)
        args = ["losetup", "-f", "--show"] + (["-r"] if read_only else [])
        dev = subprocess.run(
            [*args, str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        attached.append(dev)
        return LoopDisk(dev, image)

    yield make
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], check=False)


async def wait_for(pilot, predicate, timeout: float = 60.0, what: str = ""):
    """Pause the pilot until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    app = pilot.app
    raise AssertionError(
        f"timed out waiting for {what or predicate}; screen {app.screen!r}, "
        f"log tail {app.log_lines[-5:]}"
    )


async def loaded(pilot, *names: str, timeout: float = 60.0):
    """Wait until the inventory lists the disks ``names``."""

    def ready():
        m = pilot.app.machine
        return m is not None and {d.name for d in m.disks} >= set(names)

    await wait_for(pilot, ready, timeout, f"inventory with {names}")
    return pilot.app.machine


def screen_name(app) -> str:
    return type(app.screen).__name__


def sessions(storage: Path) -> list[str]:
    """Session folders ferry serve created (its identity folder aside)."""
    if not storage.exists():
        return []
    return sorted(p.name for p in storage.iterdir() if not p.name.startswith("."))
