"""Lab imaging through the live environment: one `ferry serve` offers the
vm-virtio machine's disk (virtio drivers only, MBR, BIOS grub); two machines
boot the unattended ISO at the same time with `ferry.mode=v2p` and a
hostname pattern, and each deploys the image onto its own blank 4 GiB disk,
1 GiB larger than the image, then powers off:

- physical-bios (SeaBIOS, AHCI, e1000): the root partition and its ext4 fill
  the disk; the disk boots alone as `lab-<its MAC>` with the NIC name the
  image's network configuration expects, pinned to its MAC;
- physical-uefi (q35, OVMF with its own NVRAM, AHCI, e1000): the BIOS image
  is converted to GPT with an EFI system partition, grub goes on it with an
  NVRAM entry and the fallback EFI/BOOT/BOOTX64.EFI; the disk boots through
  that entry (the VARS file the deploy wrote), and again through the
  fallback path with fresh NVRAM.

Negative control for UEFI: the image as it is (no fixups) on physical-uefi,
where OVMF finds no loader. (The BIOS one, written raw it does not boot on
physical-bios, is tests/e2e/test_deploy_boots.py's.) The resulting disks
and the control boot at the same time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from converters.wire.pairing import Pairing
from tests.e2e.live_helpers import MEMORY_MB, assert_ready_on, ready_fields
from tests.harness.profiles import OVMF_VARS, PROFILES
from tests.harness.qemu_runner import QemuMachine, overlay

pytestmark = [pytest.mark.slow, pytest.mark.image]

GiB, MiB = 1 << 30, 1 << 20
TARGET_SIZE = 4 * GiB
IMAGE = "vm-virtio"
MACS = {"physical-bios": "52:54:00:fe:07:01", "physical-uefi": "52:54:00:fe:07:02"}
# Under TCG the guest's TLS, the write and the initramfs rebuild in the
# chroot all run emulated, two machines at once.
DEPLOY_TIMEOUT = 2400
BOOT_TIMEOUT = 900
DONE = re.compile(r"FERRY-UNATTENDED-(DONE|FAILED) .*")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# OVMF names what it boots on the console
STARTING = re.compile(r'BdsDxe: starting Boot([0-9A-F]{4}) "([^"]*)" from (\S+)')
NO_LOADER = re.compile(r"BdsDxe: failed to load Boot[0-9A-F]{4} \"UEFI QEMU HARDDISK")


@dataclass
class LabMachine:
    profile: str
    workdir: Path
    disk: Path  # raw: inspected from this host after the deploy
    ready: dict
    done: str
    powered_off: int | None
    console: str
    wall: float

    @property
    def hostname(self) -> str:
        return "lab-" + MACS[self.profile].replace(":", "")


def offer(storage: Path, disk: Path) -> None:
    """The machine's disk as an imported VM in the server's storage."""
    image = storage / IMAGE
    image.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "convert", "-O", "qcow2", disk, image / "sda.qcow2"], check=True
    )
    (image / "inventory.json").write_text(json.dumps({"hostname": IMAGE}))


def server_reads(pairing: Pairing) -> dict:
    from converters.wire import protocol
    from converters.wire.client import WireClient

    client = WireClient(pairing, timeout=30)
    try:
        return client.request_json("GET", f"{protocol.API}/images")["reads"]
    finally:
        client.close()


@pytest.fixture(scope="module")
def lab(live_image, machine_builder, tmp_path_factory):
    from image import build
    from tests.integration.test_wire_support import Serve

    machine = machine_builder(IMAGE)
    work = tmp_path_factory.mktemp("lab")
    server = Serve(work / "storage", work / "serve.log")
    pairing = server.start()
    machines: dict[str, LabMachine] = {}
    with ExitStack() as stack:
        stack.callback(server.end_orphans)
        stack.callback(server.stop)
        offer(server.storage, machine.disk)
        # QEMU's user network shows the host's loopback as 10.0.2.2.
        seen = Pairing("10.0.2.2", pairing.port, pairing.fingerprint, pairing.secret)
        keys = (
            f"ferry.mode=v2p {seen.kernel_keys()} ferry.image={IMAGE} "
            "ferry.target=sda ferry.confirm=sda ferry.hostname=lab-{mac} "
            "ferry.post=poweroff"
        )
        iso = build.unattended_iso(live_image, work / "v2p.iso", keys)
        vms = {}
        for name, mac in MACS.items():
            folder = work / name
            folder.mkdir()
            disk = folder / "disk.raw"
            subprocess.run(["truncate", "-s", str(TARGET_SIZE), disk], check=True)
            vm = QemuMachine(
                PROFILES[name], folder, [disk], cdrom=iso, mac=mac, memory_mb=MEMORY_MB
            )
            vms[name] = stack.enter_context(vm)
        # both boot at once; the ready line's uptime= is each one's own time
        readies = {name: ready_fields(vm) for name, vm in vms.items()}
        for name, vm in vms.items():
            ready = readies[name]
            left = DEPLOY_TIMEOUT - (time.monotonic() - vm.started)
            done = vm.wait_for(DONE, max(left, 1))
            # ferry.post=poweroff ends QEMU (-no-reboot)
            powered_off = vm.proc.wait(180) if done else None
            wall = time.monotonic() - vm.started
            machines[name] = LabMachine(
                name,
                vm.workdir,
                vm.disks[0],
                ready,
                done.group(0) if done else "",
                powered_off,
                vm.console(),
                wall,
            )
        reads = server_reads(pairing)
    print(f"lab: server reads {reads}")
    yield machine, machines, reads
    for m in machines.values():
        m.disk.unlink(missing_ok=True)


def _table(disk: Path) -> dict:
    out = subprocess.run(
        ["sfdisk", "--json", str(disk)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)["partitiontable"]


def ext4_bytes(disk: Path, offset: int) -> int:
    """The size of the ext4 at `offset`, from its superblock (what df
    shows as the filesystem's size, give or take its metadata)."""
    with open(disk, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    assert struct.unpack_from("<H", sb, 0x38)[0] == 0xEF53, "no ext4 superblock"
    lo, log_size, hi = (
        struct.unpack_from("<I", sb, 4)[0],
        struct.unpack_from("<I", sb, 24)[0],
        struct.unpack_from("<I", sb, 0x150)[0],
    )
    return (lo | hi << 32) * (1024 << log_size)


def esp_files(disk: Path, offset: int, folder: str) -> list[str]:
    # mtools' geometry check is for floppies, not a partition's FAT
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    out = subprocess.run(
        ["mdir", "-b", "-i", f"{disk}@@{offset}", f"::/{folder}"],
        capture_output=True,
        text=True,
        env=env,
    )
    return [line.rsplit("/", 1)[-1].upper() for line in out.stdout.split()]


@pytest.mark.timeout(3600)
def test_two_machines_deploy_the_image_at_once_from_one_server(lab, workdir):
    _, machines, reads = lab
    for m in machines.values():
        (workdir / f"console-live-{m.profile}.log").write_text(m.console)
    for name, m in machines.items():
        assert_ready_on(m.ready, name)
        assert m.ready["mode"] == "v2p" and m.ready["keys"] == "ok", m.ready
        assert m.done.startswith(f"FERRY-UNATTENDED-DONE mode=v2p session={IMAGE}"), (
            m.console[-4000:]
        )
        assert m.powered_off == 0, "ferry.post=poweroff did not power off"
        assert f"hostname: {m.hostname}" in m.console
        print(
            f"{name}: ready at uptime {m.ready.get('uptime')}, "
            f"power-on to power-off {m.wall:.0f} s"
        )
    # one server read the image for both
    assert reads["storage"] > 0


def test_on_physical_bios_the_root_filesystem_fills_the_larger_disk(lab):
    _, machines, _ = lab
    m = machines["physical-bios"]
    table = _table(m.disk)
    assert table["label"] == "dos"
    (root,) = table["partitions"]
    start, size = int(root["start"]) * 512, int(root["size"]) * 512
    assert TARGET_SIZE - (start + size) < MiB
    assert size - ext4_bytes(m.disk, start) < 4 * MiB
    assert re.search(r"grow: partition 1 \(ext4\) \d+ -> \d+ bytes", m.console)


def test_on_physical_uefi_a_bios_image_gets_gpt_grown_root_esp_grub_nvram(lab):
    _, machines, _ = lab
    m = machines["physical-uefi"]
    table = _table(m.disk)
    assert table["label"] == "gpt"
    root, esp = table["partitions"]
    assert int(root["start"]) == 2048  # kept where the image had it
    assert esp["type"] == ESP_TYPE
    esp_start = int(esp["start"]) * 512
    assert TARGET_SIZE - esp_start - int(esp["size"]) * 512 < MiB
    # root grew up to the ESP, and its ext4 with it
    root_end = (int(root["start"]) + int(root["size"])) * 512
    assert esp_start - root_end <= 2 * MiB
    assert int(root["size"]) * 512 - ext4_bytes(m.disk, 2048 * 512) < 4 * MiB
    assert "GRUBX64.EFI" in esp_files(m.disk, esp_start, "EFI/debian")
    assert "BOOTX64.EFI" in esp_files(m.disk, esp_start, "EFI/BOOT")
    assert re.search(r"bootloader: NVRAM Boot[0-9A-F]{4} debian", m.console)
    # the entry lives in this machine's own NVRAM, which OVMF's template lacks
    label = "debian".encode("utf-16-le")
    assert label in (m.workdir / "OVMF_VARS.fd").read_bytes()
    assert label not in OVMF_VARS.read_bytes()


@dataclass
class Boot:
    vm: QemuMachine
    marker: object = None
    starting: re.Match | None = None


@pytest.fixture(scope="module")
def booted(lab, tmp_path_factory):
    """The deployed disks without the live medium, and the UEFI control,
    all at once: physical-bios; physical-uefi with the NVRAM the deploy
    wrote; physical-uefi with fresh NVRAM (the fallback path); the image as
    it is on physical-uefi."""
    machine, machines, _ = lab
    work = tmp_path_factory.mktemp("lab-boots")
    bios, uefi = machines["physical-bios"], machines["physical-uefi"]
    plans = {
        "bios": (bios, "physical-bios", None),
        "nvram": (uefi, "physical-uefi", uefi.workdir / "OVMF_VARS.fd"),
        "fallback": (uefi, "physical-uefi", None),
        "control": (None, "physical-uefi", None),
    }
    boots: dict[str, Boot] = {}
    with ExitStack() as stack:
        for key, (deployed, profile, nvram) in plans.items():
            folder = work / key
            folder.mkdir()
            if nvram is not None:
                shutil.copy(nvram, folder / "OVMF_VARS.fd")
            base = deployed.disk if deployed else machine.disk
            disk = overlay(base, folder / "disk.qcow2")
            mac = MACS[profile]
            vm = QemuMachine(PROFILES[profile], folder, [disk], mac=mac)
            boots[key] = Boot(stack.enter_context(vm))
        for key, boot in boots.items():
            if key == "control":
                boot.starting = boot.vm.wait_for(NO_LOADER, BOOT_TIMEOUT)
                boot.marker = boot.vm.wait_marker(5)
            else:
                boot.marker = boot.vm.wait_marker(BOOT_TIMEOUT)
                boot.starting = STARTING.search(boot.vm.console())
    yield boots
    for boot in boots.values():
        for disk in boot.vm.disks:
            disk.unlink(missing_ok=True)


def _assert_lab_marker(boot: Boot, profile: str, machine) -> None:
    marker = boot.marker
    assert marker, f"no boot marker; console ends with:\n{boot.vm.console()[-3000:]}"
    assert marker["host"] == "lab-" + MACS[profile].replace(":", "")
    # the name vm-virtio's network configuration expects, pinned to the MAC
    assert marker["nic"] == machine.recipe.nic != PROFILES[profile].nic_name
    assert marker["mac"] == MACS[profile]
    assert marker["addr"].startswith("10.0.2."), marker.fields
    assert marker["data"] == "ok"


def test_the_bios_machine_boots_its_disk_with_its_own_hostname(lab, booted):
    machine = lab[0]
    _assert_lab_marker(booted["bios"], "physical-bios", machine)
    print(f"physical-bios: marker after {booted['bios'].marker.seconds:.0f} s")


def test_the_uefi_machine_boots_through_its_nvram_entry(lab, booted):
    boot = booted["nvram"]
    _assert_lab_marker(boot, "physical-uefi", lab[0])
    assert boot.starting, boot.vm.console()[-3000:]
    assert boot.starting.group(2) == "debian", boot.starting.group(0)
    assert boot.starting.group(3).endswith("\\EFI\\debian\\grubx64.efi")
    print(f"physical-uefi (NVRAM entry): marker after {boot.marker.seconds:.0f} s")


def test_the_uefi_machine_boots_through_the_fallback_path_with_fresh_nvram(lab, booted):
    boot = booted["fallback"]
    _assert_lab_marker(boot, "physical-uefi", lab[0])
    # OVMF's own entry for the disk, which loads \EFI\BOOT\BOOTX64.EFI
    assert boot.starting, boot.vm.console()[-3000:]
    assert boot.starting.group(2).startswith("UEFI QEMU HARDDISK")
    print(f"physical-uefi (fallback): marker after {boot.marker.seconds:.0f} s")


def test_the_image_without_fixups_does_not_boot_on_physical_uefi(booted):
    boot = booted["control"]
    assert boot.starting, f"console ends with:\n{boot.vm.console()[-3000:]}"
    assert boot.marker is None
