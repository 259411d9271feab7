"""The checks a deploy makes before it writes, on inventory values: every
problem is reported at once, and a target is allowed only when named."""

from __future__ import annotations

import subprocess

import pytest

from converters.deploy_fixups import Hardware, has_esp, hostname_for
from converters.deploy_plan import DeployError, DeployRequest, check
from converters.deploy_write import _complement, _held_ranges
from converters.inventory import Disk

GiB = 1 << 30
MiB = 1 << 20
SDA = Disk("sda", "/dev/sda", 100 * GiB, serial="S4EWNX0R123456")


def request(*confirm: str, targets=(("sda", "/dev/sda"),)) -> DeployRequest:
    return DeployRequest("img.qcow2", list(targets), list(confirm))


@pytest.mark.parametrize("typed", ["sda", "/dev/sda", "S4EWNX0R123456", " sda "])
def test_a_disk_is_confirmed_by_its_name_path_or_serial(typed):
    plan = check(request(typed), {"sda": 10 * GiB}, {"/dev/sda": SDA})
    assert plan.disks[0].target is SDA
    assert plan.disks[0].larger_by == 90 * GiB


@pytest.mark.parametrize("typed", [[], [""], ["sdb"], ["S4EWNX0R"]])
def test_without_its_name_a_disk_is_refused(typed):
    with pytest.raises(DeployError, match="sda is not confirmed.*serial S4EWNX0R"):
        check(request(*typed), {"sda": GiB}, {"/dev/sda": SDA})


def test_every_problem_is_reported_in_one_line():
    bad = Disk(
        "sdb", "/dev/sdb", GiB, read_only=True, mounted=("/mnt",), boot_medium=True
    )
    with pytest.raises(DeployError) as err:
        check(
            request("sdb", targets=[("sda", "/dev/sdb")]),
            {"sda": 2 * GiB},
            {"/dev/sdb": bad},
        )
    text = str(err.value)
    assert "\n" not in text and text.endswith("nothing was written")
    for part in (
        "medium ferry booted from",
        "read-only",
        "mounted at /mnt",
        "too small",
    ):
        assert part in text


def test_one_disk_for_two_image_disks_and_unknown_image_disks_are_refused():
    targets = [("sda", "/dev/sda"), ("sdb", "/dev/sda"), ("sdz", "/dev/sda")]
    with pytest.raises(DeployError) as err:
        check(request("sda", targets=targets), {"sda": GiB, "sdb": GiB},
              {"/dev/sda": SDA})  # fmt: skip
    assert "more than one image disk" in str(err.value)
    assert "no disk sdz" in str(err.value)


def test_hostname_patterns_take_the_first_mac_and_the_disk_serial():
    hw = Hardware("bios", (), ("52:54:00:FE:01:01", "52:54:00:fe:01:02"), "ABC123")
    assert hostname_for("lab-{mac}", hw) == "lab-525400fe0101"
    assert hostname_for("ws-{serial}", hw) == "ws-abc123"
    assert hostname_for("plain", hw) == "plain"


def test_partition_table_areas_are_the_first_and_last_mib():
    assert _held_ranges(100 * MiB) == [(0, MiB), (99 * MiB, MiB)]
    assert _held_ranges(MiB + 4096) == [(0, MiB), (MiB, 4096)]
    assert _held_ranges(4096) == [(0, 4096)]
    assert _complement(_held_ranges(100 * MiB), 100 * MiB) == [(MiB, 98 * MiB)]


@pytest.mark.parametrize(
    "table, esp",
    [
        ("label: dos\n2048,,83\n", False),
        ("label: dos\n2048,64M,ef\n,,83\n", True),
        ("label: gpt\n2048,,L\n", False),
        ("label: gpt\n2048,64M,U\n,,L\n", True),
        ("", False),
    ],
    ids=["mbr", "mbr-esp", "gpt", "gpt-esp", "no-table"],
)
def test_images_with_an_efi_system_partition_are_told_apart(tmp_path, table, esp):
    image = tmp_path / "img.raw"
    subprocess.run(["truncate", "-s", str(256 * MiB), str(image)], check=True)
    if table:
        subprocess.run(["sfdisk", "-q", str(image)], input=table, text=True, check=True)
    assert has_esp(image.read_bytes()[:MiB]) is esp
