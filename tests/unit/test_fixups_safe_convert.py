"""The conversion's promise, on small real qcow2 files with the guest
faked: a failure leaves the captured disks byte-identical, success commits
what the fixups wrote, and a commit cut short is finished by the next run."""

from __future__ import annotations

import hashlib
import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from converters import convert
from converters.events import EventStream
from converters.fixups import guestfs_backend, pipeline
from converters.fixups.guest import GuestCommandError
from converters.inventory import Machine, Nic
from tests.unit.fake_guest import debian_guest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_io(image: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(image)],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def session(tmp_path) -> Path:
    folder = tmp_path / "session"
    folder.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "sda.qcow2"), "4M"],
        check=True,
    )
    qemu_io(folder / "sda.qcow2", "write -P 0x11 0 1M")
    inv = Machine("bios", 1, 1 << 30, nics=(Nic("ens8", "52:54:00:fe:01:01", True),))
    (folder / "inventory.json").write_text(json.dumps(inv.to_json()))
    return folder


@pytest.fixture
def fake_appliance(tmp_path, monkeypatch):
    """open_guest that writes 0xab into each overlay (as the fixups' writes
    would land there) and hands over a fake Debian guest."""
    opened = []

    @contextmanager
    def open_guest(disks, formats=None, readonly=False):
        for disk in disks:
            assert qemu_io(disk, "write -P 0xab 0 64k").returncode == 0
        opened.extend(disks)
        yield debian_guest(tmp_path / "guest")

    monkeypatch.setattr(guestfs_backend, "open_guest", open_guest)
    return opened


def failing(ctx):
    raise GuestCommandError(["update-initramfs", "-u"], 1, "injected failure")


def noop(ctx):
    pass


def test_failure_leaves_disks_byte_identical_and_no_overlay(session, fake_appliance):
    disk = session / "sda.qcow2"
    before = sha256(disk)
    steps = (
        pipeline.Step("pin NIC names", pipeline.pin_nics),
        pipeline.Step("fail", failing),
    )
    with pytest.raises(convert.ConversionError, match="injected failure"):
        convert.convert(convert.load_source([session]), EventStream(), steps=steps)
    assert fake_appliance == [convert.overlay_path(disk)]
    assert sha256(disk) == before
    assert not convert.overlay_path(disk).exists()
    assert (
        "conversion failed, disks unchanged" in (session / convert.LOG_FILE).read_text()
    )


def test_success_commits_the_overlay_into_the_disk(session, fake_appliance):
    disk = session / "sda.qcow2"
    result = convert.convert(
        convert.load_source([session]), EventStream(), steps=(pipeline.Step("n", noop),)
    )
    assert qemu_io(disk, "read -P 0xab 0 64k").returncode == 0
    assert qemu_io(disk, "read -P 0x11 64k 960k").returncode == 0
    assert not convert.overlay_path(disk).exists()
    assert result.pins[0].name == "ens8" and result.formats == ("qcow2",)
    saved = json.loads((session / convert.RESULT_FILE).read_text())
    assert saved["nics"] == [{"name": "ens8", "mac": "52:54:00:fe:01:01"}]


def test_a_commit_cut_short_is_finished_by_the_next_run(session):
    disk = session / "sda.qcow2"
    ov = convert.overlay_path(disk)
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(disk),
            "-F",
            "qcow2",
            str(ov),
        ],
        check=True,
    )
    qemu_io(ov, "write -P 0xcd 0 4k")
    (session / convert.COMMIT_RECORD).write_text(json.dumps([str(ov)]))
    assert convert.finish_interrupted_commit(session, EventStream())
    assert qemu_io(disk, "read -P 0xcd 0 4k").returncode == 0
    assert not ov.exists() and not (session / convert.COMMIT_RECORD).exists()


def test_a_second_conversion_at_once_is_refused(session, fake_appliance):
    with open(session / convert.LOCK_FILE, "w") as held:
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(convert.ConversionError, match="another conversion"):
            convert.convert(convert.load_source([session]), EventStream())


def test_sources_are_session_folders_or_disk_paths(session, tmp_path):
    src = convert.load_source([session])
    assert (
        src.disks == (session / "sda.qcow2",) and src.inventory.nics[0].name == "ens8"
    )
    plain = convert.load_source([session / "sda.qcow2"])
    assert plain.inventory is None and plain.name == "sda"
    with pytest.raises(convert.ConversionError, match="no such disk"):
        convert.load_source([tmp_path / "nope.qcow2"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(convert.ConversionError, match="holds no captured disks"):
        convert.load_source([empty])


def test_an_incomplete_capture_is_not_converted(session):
    record = {
        "name": "s1",
        "disks": [{"name": "sda", "size": 4 << 20, "complete": False}],
    }
    (session / "session.json").write_text(json.dumps(record))
    with pytest.raises(convert.ConversionError, match="capture of sda is not complete"):
        convert.load_source([session])
    record["disks"][0]["complete"] = True
    (session / "session.json").write_text(json.dumps(record))
    assert convert.load_source([session]).disks == (session / "sda.qcow2",)


def run_cli(*argv: str) -> int:
    import argparse

    from converters import convert_command

    parser = argparse.ArgumentParser(prog="ferry")
    convert_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


def test_cli_converts_and_writes_the_domain(
    session, fake_appliance, capsys, monkeypatch
):
    # only the pipeline's own steps would need a real guest; skip them here
    monkeypatch.setattr(pipeline, "STEPS", (pipeline.Step("n", noop),))
    code = run_cli(str(session), "--name", "web 1", "--memory", "3G", "--vcpus", "3")
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{session}/web-1.xml",
        f"virsh -c qemu:///system define {session}/web-1.xml",
    ]
    xml = (session / "web-1.xml").read_text()
    assert '<memory unit="MiB">3072</memory>' in xml and "<vcpu>3</vcpu>" in xml
    assert '<mac address="52:54:00:fe:01:01"/>' in xml


def test_cli_reports_an_unsupported_guest_as_one_line(session, tmp_path, monkeypatch):
    from converters.cli import FerryError
    from converters.fixups.guest import Mount
    from tests.unit.fake_guest import FEDORA, FakeGuest

    @contextmanager
    def fedora(disks, formats=None, readonly=False):
        yield FakeGuest(tmp_path / "g", [], [Mount("/dev/sda1", "/")]).put(
            "/etc/os-release", FEDORA
        )

    monkeypatch.setattr(guestfs_backend, "open_guest", fedora)
    before = sha256(session / "sda.qcow2")
    with pytest.raises(
        FerryError, match=r"(?s)support for the rhel family.*disks are unchanged"
    ):
        run_cli(str(session))
    assert sha256(session / "sda.qcow2") == before


def test_tool_output_goes_to_the_log_file_not_the_console(
    session, fake_appliance, capsys
):
    import logging

    def chatty(ctx):
        logging.getLogger("converters.fixups.x").debug("TOOL OUTPUT")
        logging.getLogger("converters.fixups.x").warning("A WARNING")

    root = logging.getLogger()
    console = logging.StreamHandler()  # what `ferry` sets up without -v
    old = root.level
    root.addHandler(console)
    root.setLevel(logging.WARNING)
    try:
        convert.convert(
            convert.load_source([session]),
            EventStream(),
            steps=(pipeline.Step("c", chatty),),
        )
    finally:
        root.removeHandler(console)
        root.setLevel(old)
    err = capsys.readouterr().err
    assert "A WARNING" in err and "TOOL OUTPUT" not in err
    log = (session / convert.LOG_FILE).read_text()
    assert "TOOL OUTPUT" in log and "A WARNING" in log
