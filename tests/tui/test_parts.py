"""The small pure parts of the TUI: numbers, sentences, checks."""

from __future__ import annotations

import pytest

from converters.events import Log, Progress
from converters.wire import errors
from tests.tui import fixed
from tui import fmt
from tui.app import sixteen_colours
from tui.command import parse_keys
from tui.connect import explain
from tui.deploy_link import ImageDisk, Mapping, confirm_matches, problems
from tui.messages import FlowEvent
from tui.unattended import UnattendedError, flow_from_keys
from tui.widgets.disks import flags

GiB = 1 << 30


def test_sizes_rates_and_durations_read_as_on_a_console():
    assert fmt.size(0) == "0 B"
    assert fmt.size(1536) == "1.5 KiB"
    assert fmt.size(447.1 * GiB) == "447.1 GiB"
    assert fmt.rate(112.4 * (1 << 20)) == "112.4 MiB/s"
    assert fmt.duration(None) == "--:--"
    assert fmt.duration(42) == "0:42"
    assert fmt.duration(3723) == "1:02:03"


@pytest.mark.parametrize(
    "err, words",
    [
        (errors.Unauthorized(reason="wrong or missing token"), "refused the secret"),
        (
            errors.LinkDown(reason="GET /v1/status: [Errno 111] Connection refused"),
            "(connection refused)",
        ),
        (
            errors.CertificateMismatch(expected="a" * 64, actual="b" * 64),
            "is not the one paired with",
        ),
        (errors.PairingError(reason="no host"), "The pairing string is not valid"),
    ],
)
def test_wire_errors_become_one_sentence_naming_the_server(err, words):
    sentence = explain(
        err, "ferry://10.0.0.5:7420/?fp=" + "0" * 64 + "&token=" + "t" * 16
    )
    assert words in sentence
    assert "10.0.0.5:7420" in sentence or isinstance(err, errors.PairingError)
    assert sentence.endswith(".")


def test_the_confirmation_takes_the_name_path_or_serial_and_nothing_else():
    sda = fixed.SDA
    for typed in ("sda", "/dev/sda", "S5Y1NX0R412345", "  sda "):
        assert confirm_matches(sda, typed)
    for typed in ("", "sdb", "SDA", "S5Y1", "yes"):
        assert not confirm_matches(sda, typed)


def test_mapping_problems_name_the_disk_and_the_numbers():
    found = problems(
        [
            Mapping(ImageDisk("vda", 500 * GiB), fixed.SDA),
            Mapping(ImageDisk("vdb", 10 * GiB), fixed.BOOT),
        ]
    )
    assert found[0] == (
        "sda is too small for image disk vda: it holds 447.1 GiB, the image "
        "needs 500.0 GiB."
    )
    assert "sdb is the medium ferry booted from." in found
    assert "sdb is read-only." in found
    assert any(
        p.startswith("sdb is in use (mounted at /run/live/medium)") for p in found
    )
    assert problems([Mapping(ImageDisk("vda", 400 * GiB), fixed.SDA)]) == []


def test_flags_say_boot_removable_read_only_mounted_and_lvm():
    assert flags(fixed.BOOT) == ["BOOT", "rem", "ro", "mnt"]
    assert flags(fixed.NVME) == ["LVM"]
    assert flags(fixed.SDA) == []


def test_sixteen_colour_terminals_are_recognised():
    assert sixteen_colours({"TERM": "linux"})
    assert sixteen_colours({"TERM": "vt220"})
    assert sixteen_colours({"TERM": "xterm-16color"})
    assert not sixteen_colours({"TERM": "xterm-256color"})


def test_kernel_keys_are_split_like_a_command_line():
    keys = parse_keys("quiet ferry.mode=p2v ferry.disks=sda,sdb console=ttyS0")
    assert keys == {"ferry.mode": "p2v", "ferry.disks": "sda,sdb"}


def test_unattended_keys_that_make_no_flow_say_why():
    token = "s" * 16 + ":" + "0" * 64
    with pytest.raises(UnattendedError, match="x2y is not one of"):
        flow_from_keys({"ferry.mode": "x2y"})
    with pytest.raises(UnattendedError, match="needs ferry.token="):
        flow_from_keys({"ferry.mode": "p2v", "ferry.server": "10.0.0.5:7420"})
    v2p = {
        "ferry.mode": "v2p",
        "ferry.server": "10.0.0.5:7420",
        "ferry.token": token,
        "ferry.image": "web01",
        "ferry.target": "sda",
        "ferry.confirm": "sda",
    }
    flow = flow_from_keys(v2p)
    assert flow.title == "V2P deploy of web01 to sda"
    with pytest.raises(UnattendedError, match="must name every disk"):
        flow_from_keys({**v2p, "ferry.target": "sda,sdb"})


def test_unattended_p2v_keys_make_the_capture_the_screens_run():
    flow = flow_from_keys(
        {
            "ferry.mode": "p2v",
            "ferry.server": "10.0.0.5:7420,10.0.0.6:7420",
            "ferry.token": "s" * 16 + ":" + "0" * 64,
            "ferry.disks": "sda,/dev/nvme0n1",
            "ferry.name": "web01",
        }
    )
    assert flow.request.disks == ["sda", "nvme0n1"]
    assert flow.request.name == "web01"
    assert [p.address for p in flow.servers] == ["10.0.0.5:7420", "10.0.0.6:7420"]


def test_only_progress_of_the_same_disk_is_merged():
    a = FlowEvent(Progress("sda", 1, 10))
    assert a.can_replace(FlowEvent(Progress("sda", 2, 10)))
    assert not a.can_replace(FlowEvent(Progress("sdb", 2, 10)))
    assert not a.can_replace(FlowEvent(Log("info", "x")))
    assert not FlowEvent(Log("info", "x")).can_replace(FlowEvent(Log("info", "y")))


def test_used_space_is_read_from_ext4_and_xfs_superblocks_and_unknown_otherwise(
    tmp_path,
):
    import os
    import subprocess

    from tui.used_space import used_bytes

    MiB = 1 << 20
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob").write_bytes(os.urandom(20 * MiB))
    ext4, xfs = tmp_path / "e.img", tmp_path / "x.img"
    for image, size in ((ext4, 64), (xfs, 320)):
        with open(image, "wb") as f:
            f.truncate(size * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(ext4)], check=True)
    subprocess.run(["mkfs.xfs", "-q", str(xfs)], check=True)
    # 20 MiB of files plus the journal and tables; never the whole 64.
    assert 20 * MiB < used_bytes(str(ext4), "ext4") < 40 * MiB
    assert 0 < used_bytes(str(xfs), "xfs") < 100 * MiB  # an empty XFS: its log
    assert used_bytes(str(ext4), "vfat") is None
    assert used_bytes(str(tmp_path / "missing"), "ext4") is None
