"""``ferry deploy`` onto real block devices (loop devices over files full of
old data), as a technician runs it: the image reads back byte for byte and
everything else reads as zeros; refusals leave the disk untouched; a link
cut during the write is resumed."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from test_wire_support import D, Proxy, S, Z, expected_image, write_source

from converters.deploy import DeployError, DeployRequest, deploy, list_images
from converters.deploy_fixups import Hardware
from converters.events import EventStream, Progress
from converters.wire.client import DiskSource, upload
from converters.wire.pairing import Pairing

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
# Data at both ends: the partition table areas held back to the last step.
LAYOUT = [
    (3 * MiB, D, "random"),
    (8 * MiB, Z, "hole"),
    (4 * MiB, S, "random"),
    (9 * MiB + 4096, D, "text"),
    (MiB - 4096, D, "zeros"),
    (6 * MiB, Z, "hole"),
    (MiB, D, "random"),
]
IMAGE_SIZE = 32 * MiB


def old_disk(path: Path, size: int) -> Path:
    """A disk that has been used: old data everywhere, which a deploy must
    not leave readable."""
    rng = random.Random(99)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def loop_device(path: Path):
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def ferry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converters.cli", "deploy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


@pytest.fixture
def image(tmp_path) -> tuple[Path, Path]:
    """A qcow2 image (as a USB stick holds it) and the raw bytes it reads as."""
    raw = tmp_path / "src.raw"
    emap = write_source(raw, LAYOUT)
    expected = expected_image(raw, emap, tmp_path / "expected.raw")
    qcow2 = tmp_path / "lab.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", expected, qcow2], check=True
    )
    return qcow2, expected


def assert_disk_is_image_then_zeros(disk: Path, expected: Path) -> None:
    data = disk.read_bytes()
    want = expected.read_bytes()
    assert data[: len(want)] == want
    assert data[len(want) :] == bytes(len(data) - len(want))


def test_a_local_image_is_written_exactly_and_the_old_data_is_zeroed(image, tmp_path):
    qcow2, expected = image
    disk = old_disk(tmp_path / "disk.img", 48 * MiB)
    with loop_device(disk) as dev:
        name = Path(dev).name
        run = ferry(
            "--image", str(qcow2), "--target", dev, "--confirm", name, "--no-fixups"
        )
    assert run.returncode == 0, run.stderr
    assert_disk_is_image_then_zeros(disk, expected)
    assert "verified by read-back" in run.stderr
    # Only the image's allocated data was written as data: its 13 MiB and
    # 4 KiB of non-zero bytes, rounded up to the qcow2's 64 KiB clusters.
    written = re.search(r"(\d+) bytes written as data", run.stderr)
    assert written, run.stderr
    assert 13 * MiB + 4096 <= int(written[1]) <= 13 * MiB + 64 * 1024 * 2


@pytest.mark.parametrize(
    "disk_size, confirm, mount, reason",
    [
        (48 * MiB, None, False, "is not confirmed"),
        (48 * MiB, "loop-other", False, "is not confirmed"),
        (16 * MiB, "NAME", False, "is too small"),
        (48 * MiB, "NAME", True, "is in use (mounted at"),
    ],
    ids=["no-confirmation", "wrong-disk-named", "too-small", "mounted"],
)
def test_refused_deploys_write_nothing(
    image, tmp_path, disk_size, confirm, mount, reason
):
    qcow2, _ = image
    disk = old_disk(tmp_path / "disk.img", disk_size)
    if mount:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    before = sha256(disk)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(disk) as dev:
        if mount:
            # read-only: the mount itself must not change the disk
            subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], check=True)
        try:
            args = ["--image", str(qcow2), "--target", dev]
            if confirm:
                args += ["--confirm", confirm.replace("NAME", Path(dev).name)]
            run = ferry(*args)
        finally:
            if mount:
                subprocess.run(["umount", str(mnt)], check=True)
    assert run.returncode == 1
    assert reason in run.stderr and "nothing was written" in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert sha256(disk) == before


def test_a_server_image_survives_a_cut_link_and_reads_back_exactly(
    tmp_path, serve, pairing
):
    raw = tmp_path / "src.raw"
    emap = write_source(raw, LAYOUT)
    upload(pairing, "pc1", [DiskSource("sda", raw, emap)])
    expected = expected_image(raw, emap, tmp_path / "expected.raw")
    proxy = Proxy(pairing.port)
    via_proxy = Pairing("127.0.0.1", proxy.port, pairing.fingerprint, pairing.secret)
    disk = old_disk(tmp_path / "disk.img", 40 * MiB)
    try:
        (info,) = list_images(via_proxy)
        # Cut while image bytes are coming down (the first random extent),
        # not between requests, where a reconnect would hide it.
        proxy.cut_after_down = proxy.downstream_bytes + 2 * MiB
        with loop_device(disk) as dev:
            request = DeployRequest(
                info, [("sda", dev)], [Path(dev).name], fixups=False
            )
            result = deploy(request, EventStream())
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    (stats,) = result.disks
    assert stats.link_failures >= 1
    assert_disk_is_image_then_zeros(disk, expected)
    assert stats.verified_bytes == stats.data_bytes > 0


def partitioned_image(path: Path, label: str, size: int = 64 * MiB) -> int:
    """An image with one ext4 partition from 1 MiB to its end (and a GPT
    backup at its end for gpt); returns the filesystem's size."""
    subprocess.run(["truncate", "-s", str(size), str(path)], check=True)
    subprocess.run(
        ["sfdisk", "-q", str(path)], input=f"label: {label}\n2048,,L\n", text=True,
        check=True,
    )  # fmt: skip
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(path)], check=True, capture_output=True
        ).stdout
    )["partitiontable"]
    fs_size = int(table["partitions"][0]["size"]) * 512
    mkfs = ["mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", str(path)]
    subprocess.run([*mkfs, f"{fs_size // 1024}k"], check=True)
    return fs_size


def ext4_size(dev: str, offset: int) -> int:
    with part_device(dev, offset) as part:
        out = subprocess.run(
            ["dumpe2fs", "-h", part], check=True, capture_output=True, text=True
        ).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


@contextmanager
def part_device(dev: str, offset: int):
    part = subprocess.run(
        ["losetup", "-f", "--show", "-r", "--offset", str(offset), dev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield part
    finally:
        subprocess.run(["losetup", "-d", part], check=False)


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_on_a_larger_disk_the_last_partition_and_its_ext4_fill_it(tmp_path, label):
    image = tmp_path / "img.raw"
    fs_before = partitioned_image(image, label)
    disk = old_disk(tmp_path / "disk.img", 160 * MiB)
    with loop_device(disk) as dev:
        run = ferry(
            "--image", str(image), "--target", dev, "--confirm", Path(dev).name,
            "--no-fixups",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        table = json.loads(
            subprocess.run(
                ["sfdisk", "--json", dev], check=True, capture_output=True
            ).stdout
        )["partitiontable"]
        (part,) = table["partitions"]
        end = (int(part["start"]) + int(part["size"])) * 512
        fs_after = ext4_size(dev, MiB)
        fsck = subprocess.run(
            ["sfdisk", "--verify", dev], capture_output=True, text=True
        )
    # The partition reaches the end (less the GPT backup), the filesystem
    # fills the partition, and the table is consistent.
    assert end >= 160 * MiB - 34 * 512
    assert fs_before < 64 * MiB
    assert end - MiB - 4096 < fs_after <= end - MiB  # whole 4 KiB blocks
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "grow: partition 1 (ext4)" in run.stderr


def test_no_grow_keeps_the_image_size(tmp_path):
    image = tmp_path / "img.raw"
    fs_before = partitioned_image(image, "dos")
    disk = old_disk(tmp_path / "disk.img", 160 * MiB)
    with loop_device(disk) as dev:
        run = ferry(
            "--image", str(image), "--target", dev, "--confirm", Path(dev).name,
            "--no-fixups", "--no-grow",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert ext4_size(dev, MiB) == fs_before


@contextmanager
def http_server(folder: Path):
    """aiohttp's static files (with Range support, which QEMU's curl driver
    needs) on loopback, in a thread of this process."""
    import asyncio
    import threading

    from aiohttp import web

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_static("/", folder)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"], state["port"] = runner, runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_an_image_at_a_url_is_written_exactly(image, tmp_path):
    qcow2, expected = image
    disk = old_disk(tmp_path / "disk.img", 40 * MiB)
    with http_server(qcow2.parent) as base, loop_device(disk) as dev:
        run = ferry(
            "--image", f"{base}/{qcow2.name}", "--target", dev,
            "--confirm", Path(dev).name, "--no-fixups",
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert_disk_is_image_then_zeros(disk, expected)


def test_a_deploy_run_again_after_a_crash_writes_only_the_rest(
    image, tmp_path, monkeypatch
):
    from converters import deploy_journal

    monkeypatch.setattr(deploy_journal, "RUN_DIR", tmp_path / "run")
    qcow2, expected = image
    disk = old_disk(tmp_path / "disk.img", 40 * MiB)

    class Crash(Exception):
        pass

    def crash(event) -> None:
        if isinstance(event, Progress) and 0 < event.done < event.total:
            raise Crash  # the process dies in the middle of the write

    events = EventStream()
    events.subscribe(crash)
    with loop_device(disk) as dev:
        request = DeployRequest(str(qcow2), [("lab", dev)], [Path(dev).name])
        request = replace(request, fixups=False)
        with pytest.raises(Crash):
            deploy(request, events)
        assert list((tmp_path / "run").glob("*.journal"))
        result = deploy(request, EventStream())
    (stats,) = result.disks
    assert stats.resumed_bytes > 0
    # Only the rest was fetched and written, but every chunk, old and new,
    # was read back and checked.
    assert stats.data_bytes < 13 * MiB < stats.verified_bytes
    assert_disk_is_image_then_zeros(disk, expected)
    assert not list((tmp_path / "run").glob("*.journal"))  # done: forgotten


def test_a_bios_image_for_a_uefi_machine_is_refused_before_any_write(tmp_path):
    image = tmp_path / "img.raw"
    partitioned_image(image, "dos")
    disk = old_disk(tmp_path / "disk.img", 80 * MiB)
    before = sha256(disk)
    uefi = Hardware("uefi", ("ahci", "sd_mod"), ("52:54:00:fe:01:01",))
    with loop_device(disk) as dev:
        request = DeployRequest(str(image), [("img", dev)], [Path(dev).name])
        with pytest.raises(DeployError, match="no EFI system partition.*nothing was"):
            deploy(replace(request, hardware=uefi), EventStream())
    assert sha256(disk) == before
