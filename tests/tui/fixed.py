"""A machine described by hand, for snapshots that look the same on every
host: a UEFI server with a SATA SSD, an NVMe disk in LVM, the USB stick
ferry booted from and a second stick for logs; two NICs, one unplugged."""

from __future__ import annotations

import threading
import time

from converters.doctor import OK, WARN, Check
from converters.events import EventStream, LinkLost, Log, Progress
from converters.inventory import Disk, Machine, Nic, Partition
from tui.deploy_link import Image, ImageDisk
from tui.flows import Flow, Outcome
from tui.probe import FixedProbe

MiB, GiB = 1 << 20, 1 << 30

SDA = Disk(
    "sda",
    "/dev/sda",
    480103981056,
    model="Samsung SSD 870",
    serial="S5Y1NX0R412345",
    transport="sata",
    partitions=(
        Partition("sda1", 1, MiB, 512 * MiB, "vfat", "EFI"),
        Partition("sda2", 2, 513 * MiB, 440 * GiB, "ext4", "root"),
        Partition("sda3", 3, 441 * GiB, 6 * GiB, "swap"),
    ),
)
NVME = Disk(
    "nvme0n1",
    "/dev/nvme0n1",
    1000204886016,
    model="WDC PC SN730",
    serial="21104R800123",
    transport="nvme",
    partitions=(Partition("nvme0n1p1", 1, MiB, 931 * GiB, "LVM2_member"),),
    holders=("dm-0", "dm-1"),
)
BOOT = Disk(
    "sdb",
    "/dev/sdb",
    15376000000,
    model="SanDisk Ultra",
    serial="4C530001",
    transport="usb",
    removable=True,
    read_only=True,
    partitions=(Partition("sdb1", 1, MiB, 14 * GiB, "iso9660", "FERRY"),),
    mounted=("/run/live/medium",),
    boot_medium=True,
)
STICK = Disk(
    "sdc",
    "/dev/sdc",
    31914983424,
    model="DataTraveler 3.0",
    serial="60A44C4138",
    transport="usb",
    removable=True,
    partitions=(Partition("sdc1", 1, MiB, 29 * GiB, "vfat", "LOGS"),),
)
MACHINE = Machine(
    firmware="uefi",
    cpus=8,
    memory=32 * GiB,
    cpu_model="Intel(R) Xeon(R) E-2236 CPU @ 3.40GHz",
    disks=(SDA, NVME, BOOT, STICK),
    nics=(
        Nic("eno1", "3c:ec:ef:12:34:56", True, "igb", ("10.0.0.15/24",)),
        Nic("eno2", "3c:ec:ef:12:34:57", False, "igb", ()),
    ),
    hostname="web01",
)
CHECKS = [
    Check("qemu-img", OK, "qemu-img version 7.2.11"),
    Check("zstd", OK, "*** Zstandard CLI (64-bit) v1.5.4"),
    Check("partclone", OK, "Partclone v0.3.23"),
    Check("parted", OK, "parted 3.6"),
    Check("pyudev", OK, "pyudev 0.24.0"),
    Check(
        "tracefs",
        WARN,
        "not mounted at /sys/kernel/tracing; live capture will mount it",
        "mount -t tracefs nodev /sys/kernel/tracing",
    ),
]
METHODS = {"eno1": {"10.0.0.15/24": "DHCP"}}
PAIRING = (
    "ferry://10.0.0.5:7420/?fp=" + "3f9a1c07be52d8e4" * 4 + "&token=Zk3vQp8sLm2xR7tY"
)
IMAGE = Image(
    "web01",
    (ImageDisk("vda", 400 * GiB), ImageDisk("vdb", 900 * GiB)),
    "/media/usb/web01.qcow2",
)


# What each partition holds (the NVMe's LVM member and the swap: unknown).
USED = {
    "sda1": 31 * MiB,
    "sda2": int(61.2 * GiB),
    "sdb1": int(1.1 * GiB),
    "sdc1": 12 * MiB,
}


def probe() -> FixedProbe:
    return FixedProbe(MACHINE, CHECKS, METHODS, used=USED)


class ScriptedFlow(Flow):
    """Emits a fixed middle of a capture, then waits for the app to end:
    the progress screen's look, without the clock of a real transfer."""

    kind = "P2V capture"
    title = "P2V capture to 10.0.0.5:7420, VM web01"

    def __init__(self, lost_link: bool = False) -> None:
        self.lost_link = lost_link
        self.emitted = threading.Event()

    def run(self, events: EventStream) -> Outcome:
        from textual.worker import get_current_worker

        events.step("connect", "10.0.0.5:7420")
        events.log(
            "connected to ferry serve 0.1.0 at 10.0.0.5:7420, certificate "
            "3f9a1c07be52d8e4..., 3.1 TiB free"
        )
        events.step("inventory", "disks, NICs, firmware")
        events.step("map", "sda: reading partitions and used blocks")
        events.log(
            "sda: 447.1 GiB disk, 61.20 GiB to send, 379.40 GiB unused and "
            "skipped (mapped in 4.2 s)"
        )
        events.step("map", "nvme0n1: reading partitions and used blocks")
        events.log(
            "nvme0n1: 931.5 GiB disk, 212.75 GiB to send, 718.70 GiB unused "
            "and skipped (mapped in 9.8 s)"
        )
        events.step("send", "session web01")
        events.step("session", "web01 on 10.0.0.5:7420")
        events.emit(
            Progress(
                "sda",
                41 * GiB,
                int(61.2 * GiB),
                rate=112.4 * MiB,
                skipped=int(385.9 * GiB),
                zero=int(1.7 * GiB),
                saved=int(9.3 * GiB),
            )
        )
        events.emit(
            Progress(
                "nvme0n1",
                int(88.5 * GiB),
                int(212.75 * GiB),
                rate=104.9 * MiB,
                skipped=int(718.7 * GiB),
                zero=int(12.1 * GiB),
                saved=int(30.4 * GiB),
            )
        )
        if self.lost_link:
            reason = (
                "link down: PUT /v1/sessions/web01/disks/sda: [Errno 104] "
                "Connection reset by peer"
            )
            events.emit(Log("warning", f"{reason}; retrying"))
            events.emit(LinkLost(reason))
        self.emitted.set()
        worker = get_current_worker()
        while not worker.is_cancelled:
            time.sleep(0.05)
        raise RuntimeError("app closed")

    def failed(self, err: BaseException) -> Outcome:
        return Outcome(False, "Capture failed", str(err))
