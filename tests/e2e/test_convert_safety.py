"""A conversion that fails (here: the guest's own update-initramfs, after
other fixups have already written) leaves the captured disk byte-identical,
and that capture still does not boot on virtio: the negative control for
the conversion tests, booted while the failing conversion runs. The capture
is made as in test_convert_boots: ferry's transfer into a real `ferry
serve` (here --no-convert)."""

from __future__ import annotations

import hashlib

import pytest

from converters import convert
from converters.events import EventStream
from converters.fixups import pipeline
from tests.e2e.convert_helpers import BOOT_TIMEOUT, boot, captured_unconverted
from tests.harness.profiles import PROFILES

# A conversion is 10-15 min of emulated CPU on a loaded 2-core host (35-40
# min at load 20), and a module's first test also pays for its fixture's
# conversion and a boot.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]

# initramfs-tools waits about 30 s for a missing root device before it gives up.
NO_ROOT = r"does not exist|Gave up waiting for root"
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
    # The unconverted capture, behind its own overlay, boots on virtio while
    # the conversion fails next to it: both only read the capture.
    with boot(session, PROFILES["virtual"], workdir) as vm:
        with pytest.raises(convert.ConversionError, match="update-initramfs"):
            convert.convert(
                convert.load_source([session]), EventStream(), steps=failing_steps()
            )
        no_root = vm.wait_for(NO_ROOT, BOOT_TIMEOUT)
        console = vm.console()
    assert no_root, f"unconverted capture: no missing-root message:\n{console[-3000:]}"
    assert "FERRY-BOOTED" not in console
    assert sha256(disk) == before
    assert not convert.overlay_path(disk).exists()
    assert not (session / convert.COMMIT_RECORD).exists()
    log = (session / convert.LOG_FILE).read_text()
    assert "devices: rewrote /etc/fstab" in log  # it failed after writing
    assert "injected failure" in log and "disks unchanged" in log
