"""ferry's boot check on a UEFI VM whose disk holds no system: the guestfs
step finds nothing to prepare and says so, the VM boots anyway, and the
check stops at OVMF's "failed to load" within seconds of it, not at the
timeout; QEMU is gone, the overlays are deleted, the domain's variable
store is untouched. (The booting and initramfs outcomes are proved on real
conversions in tests/e2e.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from converters import accel, boot_check
from converters.domain.firmware import find_ovmf
from converters.domain.spec import DiskSpec, DomainSpec, NicSpec
from converters.events import EventStream, Log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TIMEOUT = 600.0


def test_a_disk_with_no_system_stops_in_the_firmware_long_before_the_timeout(
    tmp_path,
):
    ovmf = find_ovmf()
    if ovmf is None:
        pytest.skip("no OVMF installed")
    disk = tmp_path / "sda.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", disk, "256M"], check=True
    )
    nvram = tmp_path / "empty_VARS.fd"
    nvram.write_bytes(ovmf.vars_template.read_bytes())
    spec = DomainSpec(
        "empty", 1, 512, "uefi", (DiskSpec(disk),),
        (NicSpec("52:54:00:fe:01:07"),), kvm=False, ovmf=ovmf, nvram=nvram,
    )  # fmt: skip
    said: list[str] = []
    events = EventStream()
    events.subscribe(lambda e: said.append(e.message) if isinstance(e, Log) else None)

    result = boot_check.run(spec, tmp_path, events, timeout=TIMEOUT)

    print(f"empty disk: {result.summary()}")
    assert (result.result, result.stage) == ("stopped", "firmware"), result
    assert result.line.startswith("BdsDxe: failed to load"), result
    assert result.seconds < 120, result
    assert result.accelerator == accel.detect().name
    assert any("console not prepared" in m for m in said), said
    assert said[-1].startswith("boot check: stopped in the firmware: no bootable disk")
    saved = json.loads((tmp_path / boot_check.RESULT_FILE).read_text())
    assert saved["stage"] == "firmware" and saved["last_lines"]
    assert "BdsDxe" in (tmp_path / boot_check.LOG_FILE).read_text(errors="replace")
    assert not list(tmp_path.glob(".boot-check-*"))
    assert nvram.read_bytes() == ovmf.vars_template.read_bytes()
    # QEMU was ended: nothing holds the disk (qemu-img takes its write lock)
    subprocess.run(["qemu-img", "check", "-q", disk], check=True)
    subprocess.run(
        ["qemu-img", "resize", "-q", disk, "257M"], check=True, capture_output=True
    )
