"""V2P: the vm-virtio machine (an initramfs with virtio drivers only),
offered by a real ``ferry serve``, deployed onto disks of a physical-bios
machine (AHCI, e1000) boots there with the new hostname and the interface
name its network configuration expects, pinned to the machine's MAC; the
same image written raw, without fixups, does not boot there. The target
disk is 1 GiB larger than the image: the root filesystem grows into it.

The deploy that boots is also the one that went through trouble: its link
is cut while image bytes flow (the source reconnects and goes on), then the
process dies half-way through the write; run again, it resumes from its
journal, fetches only the rest, and the result boots. One boot proves all
of it.

The deploy runs on this host, not inside the target machine (the live ISO
does not carry this code yet), so the target's hardware is given as the
live side would find it: AHCI + sd_mod + e1000, BIOS, its NIC's MAC and its
disk's serial. The targets are loop devices over files the boots then use
as their disks.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from converters import deploy_journal
from converters.deploy import DeployRequest, deploy, list_images
from converters.deploy_fixups import Hardware
from converters.events import EventStream, Progress, print_listener
from converters.wire.pairing import Pairing
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import DEFAULT_MAC, QemuMachine, overlay
from tests.integration.test_capture import loop_device
from tests.integration.test_wire_support import Proxy, Serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

GiB = 1 << 30
# A guest at load 20 (five engineers sharing two cores) was still starting
# its services after 600 s: the deploy had worked, the clock ran out.
BOOT_TIMEOUT = 900
NO_ROOT = r"does not exist|Gave up waiting for root"
SERIAL = "FERRY0001"
TARGET = Hardware("bios", ("ahci", "sd_mod", "e1000"), (DEFAULT_MAC,), SERIAL)
# The link is cut this far into the image's bytes, the process dies at half.
CUT_AFTER = 64 << 20


class Crash(Exception):
    """The deploying process dying (a listener raising stops it where a kill
    would, between two chunks)."""


def _crash_at_half(event) -> None:
    if isinstance(event, Progress) and event.done * 2 > event.total > 0:
        raise Crash


def _deploy(info, disk: Path, fixups: bool, troubled: bool = False):
    """Deploys ``info`` onto a loop device over ``disk``; ``troubled``: the
    link is cut during the write, the first run dies half-way and a second
    resumes. Returns the (last) result, seconds, and the first run's
    link failures."""
    subprocess.run(["truncate", "-s", str(4 * GiB), str(disk)], check=True)
    with loop_device(disk, read_only=False) as dev:
        request = DeployRequest(
            info,
            [("sda", dev)],
            [Path(dev).name],
            hostname="lab-{serial}",
            fixups=fixups,
            grow=fixups,
            hardware=TARGET,
        )
        started = time.monotonic()
        cut_events = EventStream()
        cut_events.subscribe(print_listener())
        if troubled:
            cut_events.subscribe(_crash_at_half)
            with pytest.raises(Crash):
                deploy(request, cut_events)
        events = EventStream()
        events.subscribe(print_listener())
        result = deploy(request, events)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def deployed(machine_builder, tmp_path_factory):
    """vm-virtio imported into a ferry serve, deployed twice: with fixups
    for the physical-bios machine, and raw."""
    machine = machine_builder("vm-virtio")
    work = tmp_path_factory.mktemp("v2p")
    server = Serve(work / "storage", work / "serve.log")
    pairing = server.start()
    try:
        image = work / "storage" / "vm-virtio"
        image.mkdir()
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", machine.disk, image / "sda.qcow2"],
            check=True,
        )
        (image / "inventory.json").write_text(json.dumps({"hostname": "vm-virtio"}))
        proxy = Proxy(pairing.port)
        via_proxy = Pairing(
            "127.0.0.1", proxy.port, pairing.fingerprint, pairing.secret
        )
        try:
            (info,) = list_images(via_proxy)
            # Cut while image bytes come down, not between requests.
            proxy.cut_after_down = proxy.downstream_bytes + CUT_AFTER
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(deploy_journal, "RUN_DIR", work / "journal")
                fixed, fixed_s = _deploy(info, work / "fixed.raw", True, True)
        finally:
            proxy.close()
        cuts = proxy.cuts
        (info,) = list_images(pairing)
        raw, raw_s = _deploy(info, work / "plain.raw", False)
    finally:
        server.stop()
        server.end_orphans()
    print(f"deploy with fixups (cut, crash, resume) {fixed_s:.0f} s, raw {raw_s:.0f} s")
    yield machine, work, fixed, raw, cuts
    for name in ("fixed.raw", "plain.raw"):
        (work / name).unlink(missing_ok=True)


def boot(disk: Path, workdir: Path) -> QemuMachine:
    image = overlay(disk, workdir / "boot.qcow2")
    return QemuMachine(PROFILES["physical-bios"], workdir, [image])


def test_a_deploy_cut_and_resumed_boots_on_physical_bios_with_hostname_and_nic(
    deployed, workdir
):
    machine, work, fixed, _, cuts = deployed
    (disk,) = fixed.disks
    # The link was cut during the first run (which went on over a new
    # connection, then died); the second run resumed from the journal and
    # fetched only the rest, yet read back everything.
    assert cuts >= 1
    assert disk.resumed_bytes > 0 and disk.data_bytes < disk.verified_bytes
    profile = PROFILES["physical-bios"]
    with boot(work / "fixed.raw", workdir) as vm:
        marker = vm.wait_marker(BOOT_TIMEOUT)
    assert marker, f"no boot marker; console ends with:\n{vm.console()[-3000:]}"
    assert marker["host"] == "lab-ferry0001" == fixed.fixups.hostname
    # The name vm-virtio's network configuration expects, on hardware that
    # would name its NIC otherwise: the pin to this machine's MAC did it.
    assert marker["nic"] == machine.recipe.nic != profile.nic_name
    assert marker["mac"] == DEFAULT_MAC
    assert marker["addr"].startswith("10.0.2."), marker.fields
    assert marker["data"] == "ok"
    # The 4 GiB disk is 1 GiB larger than the image: root grew into it.
    (grown,) = fixed.grown
    assert grown.fstype == "ext4" and grown.new_size - grown.old_size > 1000 << 20
    print(f"deployed vm-virtio on physical-bios: marker after {marker.seconds:.0f} s")


def test_the_same_image_written_raw_does_not_boot_on_physical_bios(deployed, workdir):
    _, work, _, raw, _ = deployed
    assert raw.fixups is None
    with boot(work / "plain.raw", workdir) as vm:
        found = vm.wait_for(NO_ROOT, BOOT_TIMEOUT)
    assert found, f"console ends with:\n{vm.console()[-3000:]}"
