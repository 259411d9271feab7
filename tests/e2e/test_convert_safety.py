"""A conversion that fails (here: the guest's own update-initramfs, after
other fixups have already written) leaves the captured disk byte-identical,
and that capture still does not boot on virtio: the negative control for
the conversion tests and for ferry's boot check, which checks the
unconverted capture (`ferry convert --check-boot-only`) while the failing
conversion runs and must name the initramfs waiting for the root disk,
without waiting for its timeout. The capture is made as in
test_convert_boots: ferry's transfer into a real `ferry serve` (here
--no-convert)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest

from converters import boot_check, convert
from converters.events import EventStream
from converters.fixups import pipeline
from tests.e2e.convert_helpers import BOOT_TIMEOUT, captured_unconverted
from tests.integration.test_wire_support import REPO

# A conversion is 10-15 min of emulated CPU on a loaded 2-core host (35-40
# min at load 20), and a module's first test also pays for its fixture's
# conversion and a boot.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

FAILING_HOOK = """#!/bin/sh
# planted by ferry's safety test: the guest's own tool fails
[ "$1" = prereqs ] && exit 0
echo "injected failure" >&2
exit 1
"""


def plant_failing_hook(ctx: pipeline.Context) -> None:
    ctx.guest.write(
        "/etc/initramfs-tools/hooks/zz-ferry-test-fail", FAILING_HOOK, 0o755
    )


def failing_steps() -> tuple[pipeline.Step, ...]:
    """The real steps, with the guest's tool made to fail after the NIC
    pins and device names were written into the overlay."""
    real = list(pipeline.STEPS)
    at = next(i for i, s in enumerate(real) if s.name == "rebuild initramfs")
    return tuple(real[:at] + [pipeline.Step("plant", plant_failing_hook)] + real[at:])


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_failed_conversion_leaves_capture_byte_identical(machine_builder, workdir):
    machine = machine_builder("phys-bios")
    session = captured_unconverted(machine, workdir, "phys-bios")
    disk = session / "sda.qcow2"
    before = sha256(disk)
    # ferry's boot check of the unconverted capture (the domain's machine:
    # virtio) runs while the conversion fails next to it: both only read
    # the capture.
    check_cmd = [
        sys.executable, "-m", "converters.cli", "convert", str(session),
        "--check-boot-only", "--check-boot-timeout", str(BOOT_TIMEOUT),
    ]  # fmt: skip
    with open(workdir / "check-output.log", "w+") as output:
        check = subprocess.Popen(
            check_cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, text=True
        )
        try:
            with pytest.raises(convert.ConversionError, match="update-initramfs"):
                convert.convert(
                    convert.load_source([session]), EventStream(), steps=failing_steps()
                )
            code = check.wait(BOOT_TIMEOUT + 600)
        finally:
            if check.poll() is None:
                check.kill()
                check.wait()
        output.seek(0)
        said = output.read()
    result = json.loads((session / boot_check.RESULT_FILE).read_text())
    console = (session / boot_check.LOG_FILE).read_text(errors="replace")
    print(f"boot check of the unconverted capture: {result['summary']}")
    assert code == 1, said
    # one line for the user, naming the stage and the console log
    line = (
        re.escape(
            "ferry convert: the boot check failed: stopped in the initramfs waiting "
            "for the root disk after "
        )
        + rf"\d+ s \(log: {re.escape(str(session / boot_check.LOG_FILE))}\)"
    )
    assert re.search(line, said), said
    assert (result["result"], result["stage"]) == ("stopped", "initramfs"), result
    assert any("/dev/sda1 does not exist" in ln for ln in result["last_lines"]), result
    # decided by the console, long before the timeout
    assert result["seconds"] < BOOT_TIMEOUT / 2, result
    assert "FERRY-BOOTED" not in console and "FERRY-BOOT-CHECK" not in console
    assert not list(session.glob(".boot-check-*")), "overlays left behind"

    assert sha256(disk) == before
    assert not convert.overlay_path(disk).exists()
    assert not (session / convert.COMMIT_RECORD).exists()
    log = (session / convert.LOG_FILE).read_text()
    assert "devices: rewrote /etc/fstab" in log  # it failed after writing
    assert "injected failure" in log and "disks unchanged" in log
