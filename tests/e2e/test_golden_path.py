"""The golden path, unattended P2V: the phys-bios machine (physical-bios
hardware, its disk on SATA) boots the live environment with `ferry.mode=p2v`
and the keys `ferry serve` printed (with the address the guest sees),
captures its disk into the server and powers off; the server converts the
session on its own, and the VM boots as the same machine on virtio
hardware: its hostname, its NIC name on the MAC it keeps, its address, its
data.

Once booted from the ISO as a CD on SeaBIOS (the keys in the default entry,
as `make image FERRY_KEYS=...` makes it) and once over PXE (the keys in
iPXE's ferry_args, kernel and initramfs over HTTP). Each boot also proves
that boot path reaches FERRY-LIVE-READY. The two are test classes so that
the two runs go to different workers."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest

from converters.wire.pairing import Pairing
from tests.e2e.live_helpers import (
    MEMORY_MB,
    assert_ready_on,
    http_server,
    ipxe_chain,
    ready_fields,
)
from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import DEFAULT_MAC, QemuMachine

pytestmark = [pytest.mark.slow, pytest.mark.image]

# Under TCG the guest's TLS and zstd run emulated: about a GiB of live data
# takes minutes; the margin covers a loaded host.
CAPTURE_TIMEOUT = 2400
# the guest's initramfs tool runs in the emulated guestfs appliance
CONVERT_TIMEOUT = 1800
SESSION = "golden"


class Captured:
    def __init__(self, boot, machine, server, fields, done, powered_off, console):
        self.boot = boot
        self.machine = machine
        self.server = server
        self.fields = fields
        self.done = done
        self.powered_off = powered_off
        self.console = console
        self.wall = 0.0


@pytest.fixture(scope="class")
def captured(request, live_image, machine_builder, tmp_path_factory):
    from image import build
    from tests.harness.qemu_runner import overlay
    from tests.integration.test_wire_support import Serve

    boot = request.cls.boot
    machine = machine_builder("phys-bios")
    work = tmp_path_factory.mktemp(f"golden-{boot}")
    # ferry serve converts the capture itself once it is complete
    server = Serve(work / "storage", work / "serve.log", convert=True)
    pairing = server.start()
    # QEMU's user network shows the host's loopback as 10.0.2.2.
    seen = Pairing("10.0.2.2", pairing.port, pairing.fingerprint, pairing.secret)
    keys = (
        f"ferry.mode=p2v {seen.kernel_keys()} ferry.name={SESSION} ferry.post=poweroff"
    )
    source = overlay(machine.disk, work / "source.qcow2")
    medium: dict = {}
    with ExitStack() as stack:
        stack.callback(_end_server, server, work)
        if boot == "iso":
            medium["cdrom"] = build.unattended_iso(live_image, work / "p2v.iso", keys)
        else:
            port, requests = stack.enter_context(http_server(live_image.pxe))
            medium["pxe"] = ipxe_chain(work / "tftp", port, keys)
        vm = QemuMachine(
            PROFILES["physical-bios"], work, [source], memory_mb=MEMORY_MB, **medium
        )
        with vm:
            fields = ready_fields(vm)
            done = vm.wait_for(r"FERRY-UNATTENDED-(DONE|FAILED) .*", CAPTURE_TIMEOUT)
            # ferry.post=poweroff ends QEMU (-no-reboot)
            powered_off = vm.proc.wait(180) if done else None
            wall = time.monotonic() - vm.started
        result = Captured(boot, machine, server, fields, done, powered_off, "")
        result.console = vm.console()
        result.wall = wall
        if boot == "pxe":
            result.fields["served"] = ",".join(sorted(set(requests)))
        yield result


def _end_server(server, work) -> None:
    server.stop()
    server.end_orphans()
    for disk in work.rglob("*.qcow2"):
        disk.unlink()


class GoldenPath:
    boot: str
    medium: str  # what FERRY-LIVE-READY names as the boot medium

    @pytest.mark.timeout(3600)
    def test_boots_to_ready_then_captures_into_ferry_serve(self, captured, workdir):
        (workdir / "console-unattended.log").write_text(captured.console)
        fields = captured.fields
        assert_ready_on(fields, "physical-bios")
        assert fields["boot"] == self.medium, fields
        assert fields["mode"] == "p2v" and fields["keys"] == "ok", fields
        if self.boot == "pxe":
            served = set(fields["served"].split(","))
            assert {"/ferry.ipxe", "/vmlinuz", "/initrd.img"} <= served, served
        done = captured.done
        assert done, captured.console[-4000:]
        expected = f"FERRY-UNATTENDED-DONE mode=p2v session={SESSION}"
        assert done.group(0).startswith(expected), done.group(0)
        # plain progress lines on the serial console
        console = captured.console
        assert "== map: sda" in console and f"== send: session {SESSION}" in console
        assert captured.powered_off == 0, "ferry.post=poweroff did not power off"
        session = captured.server.storage / SESSION
        assert (session / "sda.qcow2").exists()
        inventory = json.loads((session / "inventory.json").read_text())
        nics = {n["name"]: n["mac"] for n in inventory["nics"]}
        assert nics == {"ens8": DEFAULT_MAC}
        # the live medium is not a disk of the machine
        assert [d["name"] for d in inventory["disks"]] == ["sda"]
        print(
            f"{self.boot}: ready {fields['wall']}, power-on to power-off "
            f"{captured.wall:.0f} s"
        )

    @pytest.mark.timeout(3600)
    def test_the_captured_machine_boots_as_itself_on_virtio(self, captured, workdir):
        from converters.wire import autoconvert
        from tests.e2e.convert_helpers import BOOT_TIMEOUT, boot, log_tail

        assert captured.done and "DONE" in captured.done.group(0), "no capture"
        session = captured.server.storage / SESSION
        status = autoconvert.wait(session, timeout=CONVERT_TIMEOUT)
        assert status and status.state == "converted", (status, log_tail(session))
        took = status.seconds
        # named after the session, not after the live system's host name
        assert status.domain_xml == str(session / f"{SESSION}.xml"), status
        profile = PROFILES["virtual"]
        with boot(session, profile, workdir) as vm:
            marker = vm.wait_marker(BOOT_TIMEOUT)
        assert marker, f"no marker:\n{vm.console()[-3000:]}\n{log_tail(session)}"
        assert marker["host"] == captured.machine.hostname
        # the source's NIC name, pinned to the MAC the VM keeps
        assert marker["nic"] == "ens8" != profile.nic_name
        assert marker["addr"].startswith("10.0.2."), marker.fields
        assert marker["data"] == "ok"
        print(
            f"golden path ({self.boot}): converted in {took:.0f} s, "
            f"booted in {marker.seconds:.0f} s"
        )


class TestGoldenPathFromTheIsoOnSeabios(GoldenPath):
    boot = "iso"
    medium = "/dev/sr0"


class TestGoldenPathOverPxe(GoldenPath):
    boot = "pxe"
    medium = "none"  # nothing to protect: no medium
