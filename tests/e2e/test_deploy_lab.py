"""Lab imaging through the live environment: one `ferry serve` offers the
vm-virtio-dracut machine's disk (MBR, BIOS grub, a dracut initramfs with
virtio drivers only, whose configuration omits the AHCI drivers and the
modules they depend on, as builds for one kind of hardware do); two machines
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

Each deploy registers a first-boot report with the server (waiting until
the disk boots); the server keeps running while the deployed disks boot,
which reach it at 10.0.2.2, and each machine's report arrives with its lab
host name, NIC, MAC and address. The two boots of the UEFI disk share its
one report: one makes it, the other is refused. After the boots, the
report's unit, script and credential are gone from every disk.

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

from converters import deploy_report, first_boot_report
from converters.wire.pairing import Pairing
from tests.e2e.live_helpers import MEMORY_MB, assert_ready_on, ready_fields
from tests.harness.profiles import OVMF_VARS, PROFILES
from tests.harness.qemu_runner import QemuMachine, overlay

pytestmark = [pytest.mark.slow, pytest.mark.image]

GiB, MiB = 1 << 30, 1 << 20
TARGET_SIZE = 4 * GiB
IMAGE = "vm-virtio-dracut"
MACS = {"physical-bios": "52:54:00:fe:07:01", "physical-uefi": "52:54:00:fe:07:02"}
# Under TCG the guest's TLS, the write and the initramfs rebuild in the
# chroot all run emulated, two machines at once.
DEPLOY_TIMEOUT = 2400
BOOT_TIMEOUT = 900
# From the boot marker: the report waits for network-online, then curl's
# TLS handshake runs emulated.
REPORT_TIMEOUT = 600
REPORTED = re.compile(r"ferry-first-boot-report: (reported|.* refused|.* not answer).*")
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
    # The server outlives this fixture's machines: the deployed disks
    # report to it when they boot (the `booted` fixture).
    with ExitStack() as serving:
        serving.callback(server.end_orphans)
        serving.callback(server.stop)
        with ExitStack() as stack:
            offer(server.storage, machine.disk)
            # QEMU's user network shows the host's loopback as 10.0.2.2.
            seen = Pairing(
                "10.0.2.2", pairing.port, pairing.fingerprint, pairing.secret
            )
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
                    PROFILES[name],
                    folder,
                    [disk],
                    cdrom=iso,
                    mac=mac,
                    memory_mb=MEMORY_MB,
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
            waiting = deploy_report.list_reports(pairing, IMAGE)
        print(f"lab: server reads {reads}")
        yield Lab(machine, machines, reads, server, pairing, waiting)
    for m in machines.values():
        m.disk.unlink(missing_ok=True)


@dataclass
class Lab:
    machine: object  # the image's BuiltMachine
    machines: dict[str, LabMachine]
    reads: dict
    server: object  # the Serve, running until the module's boots are done
    pairing: Pairing
    waiting: list  # the report slots right after the deploys


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
    machines, reads = lab.machines, lab.reads
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
    machines = lab.machines
    m = machines["physical-bios"]
    table = _table(m.disk)
    assert table["label"] == "dos"
    (root,) = table["partitions"]
    start, size = int(root["start"]) * 512, int(root["size"]) * 512
    assert TARGET_SIZE - (start + size) < MiB
    assert size - ext4_bytes(m.disk, start) < 4 * MiB
    assert re.search(r"grow: partition 1 \(ext4\) \d+ -> \d+ bytes", m.console)


def test_on_physical_uefi_a_bios_image_gets_gpt_grown_root_esp_grub_nvram(lab):
    machines = lab.machines
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
    reported: str = ""  # the report script's last line on the console
    left: list[str] | None = None  # the report's files still on the disk


class Boots(dict):
    """Boot by key, and the server's report slots after them."""

    reports: list = []
    as_deployed: dict = {}  # the report's paths on each disk before its boot


def wait_for_reports(pairing: Pairing, hosts: set[str], timeout: float) -> list:
    """The server's report slots once every host in ``hosts`` is up, or
    as they are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        slots = deploy_report.list_reports(pairing, IMAGE)
        up = {s.hostname for s in slots if s.state == "up"}
        if hosts <= up or time.monotonic() > deadline:
            return slots
        time.sleep(5)


def report_files_left(disks: dict[str, Path]) -> dict[str, list[str]]:
    """For each disk (a qcow2 overlay whose guest was killed after the
    script's sync, or a deployed raw disk as its deploy left it), the
    report's paths on its root filesystem (partition 1 on every deployed
    disk here): guestfs mounts a throwaway overlay, so ext4 replays its
    journal as the next boot would."""
    import guestfs

    from converters import accel

    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(accel.detect().guestfs_settings())
    for disk in disks.values():
        fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
        g.add_drive_opts(str(disk), format=fmt, readonly=True)
    g.launch()
    found = {}
    try:
        paths = (*first_boot_report.INSTALLED, first_boot_report.CONF_DIR)
        for i, key in enumerate(disks):
            g.mount_ro(f"/dev/sd{'abcdefgh'[i]}1", "/")
            found[key] = [p for p in paths if g.exists(p) or g.is_symlink(p)]
            g.umount_all()
    finally:
        g.shutdown()
        g.close()
    return found


@pytest.fixture(scope="module")
def booted(lab, tmp_path_factory):
    """The deployed disks without the live medium, and the UEFI control,
    all at once: physical-bios; physical-uefi with the NVRAM the deploy
    wrote; physical-uefi with fresh NVRAM (the fallback path); the image as
    it is on physical-uefi."""
    machine, machines = lab.machine, lab.machines
    work = tmp_path_factory.mktemp("lab-boots")
    bios, uefi = machines["physical-bios"], machines["physical-uefi"]
    plans = {
        "bios": (bios, "physical-bios", None),
        "nvram": (uefi, "physical-uefi", uefi.workdir / "OVMF_VARS.fd"),
        "fallback": (uefi, "physical-uefi", None),
        "control": (None, "physical-uefi", None),
    }
    boots = Boots()
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
        # The server is still up: the deployed systems report to it (those
        # that booted: a boot that failed is its own test's failure).
        hosts = {bios.hostname} if boots["bios"].marker else set()
        if boots["nvram"].marker or boots["fallback"].marker:
            hosts.add(uefi.hostname)
        boots.reports = wait_for_reports(lab.pairing, hosts, REPORT_TIMEOUT)
        for key, boot in boots.items():
            if key != "control" and boot.marker:
                found = boot.vm.wait_for(REPORTED, REPORT_TIMEOUT)
                boot.reported = found.group(0) if found else ""
    deployed = {k: b.vm.disks[0] for k, b in boots.items() if k != "control"}
    # the control: the same paths on the deployed disks as written, before
    # any boot (the overlays' backing files)
    deployed.update({"bios-as-deployed": bios.disk, "uefi-as-deployed": uefi.disk})
    found = report_files_left(deployed)
    for key, boot in boots.items():
        boot.left = found.get(key)
    boots.as_deployed = {k: v for k, v in found.items() if k.endswith("-deployed")}
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
    machine = lab.machine
    _assert_lab_marker(booted["bios"], "physical-bios", machine)
    print(f"physical-bios: marker after {booted['bios'].marker.seconds:.0f} s")


def test_the_uefi_machine_boots_through_its_nvram_entry(lab, booted):
    boot = booted["nvram"]
    _assert_lab_marker(boot, "physical-uefi", lab.machine)
    assert boot.starting, boot.vm.console()[-3000:]
    assert boot.starting.group(2) == "debian", boot.starting.group(0)
    assert boot.starting.group(3).endswith("\\EFI\\debian\\grubx64.efi")
    print(f"physical-uefi (NVRAM entry): marker after {boot.marker.seconds:.0f} s")


def test_the_uefi_machine_boots_through_the_fallback_path_with_fresh_nvram(lab, booted):
    boot = booted["fallback"]
    _assert_lab_marker(boot, "physical-uefi", lab.machine)
    # OVMF's own entry for the disk, which loads \EFI\BOOT\BOOTX64.EFI
    assert boot.starting, boot.vm.console()[-3000:]
    assert boot.starting.group(2).startswith("UEFI QEMU HARDDISK")
    print(f"physical-uefi (fallback): marker after {boot.marker.seconds:.0f} s")


def test_the_image_without_fixups_does_not_boot_on_physical_uefi(booted):
    boot = booted["control"]
    assert boot.starting, f"console ends with:\n{boot.vm.console()[-3000:]}"
    assert boot.marker is None


def test_each_deploy_registered_a_report_that_waits_for_the_boot(lab):
    slots = {s.hostname: s for s in lab.waiting}
    assert set(slots) == {m.hostname for m in lab.machines.values()}
    for name, m in lab.machines.items():
        slot = slots[m.hostname]
        # nothing is up before the deployed disk boots
        assert (slot.state, slot.image, slot.macs) == ("waiting", IMAGE, (MACS[name],))
        assert (
            f"first-boot report: {m.hostname} will report to ferry serve at "
            f"10.0.2.2:{lab.pairing.port}" in m.console
        )


def test_each_deployed_machine_reports_its_first_boot_to_the_server(lab, booted):
    slots = {s.hostname: s for s in booted.reports}
    log = lab.server.log.read_text()
    for name, m in lab.machines.items():
        slot = slots[m.hostname]
        assert slot.state == "up", (slot, log[-3000:])
        report = slot.report
        assert report.hostname == m.hostname
        # the NIC name the image's configuration uses, pinned to this
        # machine's MAC, and its address from QEMU's DHCP
        assert (report.nic, report.mac) == (lab.machine.recipe.nic, MACS[name])
        assert report.addr.startswith("10.0.2."), report
        assert report.boot_seconds > 0
        line = (
            f"REPORT up id={slot.id} host={m.hostname} nic={report.nic} "
            f"mac={MACS[name]} addr={report.addr}"
        )
        assert line in log
        print(f"{name}: reported at {report.boot_seconds:.0f} s of uptime")
    assert booted["bios"].reported.startswith("ferry-first-boot-report: reported")
    # the UEFI disk booted twice (its NVRAM entry, then the fallback path
    # with fresh NVRAM): its one report was made once and refused after
    lines = sorted(booted[k].reported for k in ("nvram", "fallback"))
    assert "refused the report (HTTP 403)" in lines[0], lines
    assert lines[1].startswith("ferry-first-boot-report: reported"), lines


def test_the_report_removes_its_unit_script_and_credential_after_the_boot(booted):
    every = [*first_boot_report.INSTALLED, first_boot_report.CONF_DIR]
    assert booted.as_deployed == {
        "bios-as-deployed": every,
        "uefi-as-deployed": every,
    }
    for key in ("bios", "nvram", "fallback"):
        assert booted[key].left == [], (key, booted[key].left)
