"""Shared steps of the live image's tests: wait for the FERRY-LIVE-READY
line and read it, serve the PXE bundle over HTTP on the host's loopback,
and hand out the iPXE script a site's DHCP/TFTP would."""

from __future__ import annotations

import functools
import http.server
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness.profiles import PROFILES
from tests.harness.qemu_runner import QemuMachine

MEMORY_MB = 2048  # the budget: the whole root lives in this RAM
# Under TCG on an idle 2-core host the ready line comes within about two
# minutes; the margin covers a loaded CI machine (other tests boot too).
READY_TIMEOUT = 900
READY = re.compile(r"FERRY-LIVE-READY (.*)")
# A build needs the chroot, its tree, a squashfs and the media at once.
BUILD_SPACE = 6 << 30


def ready_fields(vm: QemuMachine, timeout: float = READY_TIMEOUT) -> dict[str, str]:
    found = vm.wait_for(READY, timeout)
    assert found, f"no FERRY-LIVE-READY; console ends with:\n{vm.console()[-4000:]}"
    fields = dict(w.split("=", 1) for w in found.group(1).split() if "=" in w)
    # from QEMU's start, firmware and boot loader included
    fields["wall"] = f"{time.monotonic() - vm.started:.0f}s"
    return fields


def assert_ready_on(fields: dict[str, str], profile_name: str) -> None:
    profile = PROFILES[profile_name]
    assert "error" not in fields, fields
    assert fields["firmware"] == profile.firmware
    # systemd-networkd got the profile's NIC its address from QEMU's DHCP
    assert fields["nics"].startswith(f"{profile.nic_name}=10.0.2.15/"), fields
    assert fields["listen"] == "none", fields
    assert fields["root"] == "locked"
    assert fields["doctor"] == "ok", fields


def blank_disk(workdir: Path, size: str = "2G") -> Path:
    disk = workdir / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, size], check=True)
    return disk


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002 - the base's name
        self.requests.append(self.path)


@contextmanager
def http_server(directory: Path) -> Iterator[tuple[int, list[str]]]:
    """`directory` over HTTP on the host's loopback (10.0.2.2 to QEMU's user
    network), as a datacenter serves the PXE bundle; TFTP is too slow for
    the initramfs. Yields the port and the paths requested."""
    requests: list[str] = []
    handler = functools.partial(
        type("Handler", (_Handler,), {"requests": requests}),
        directory=str(directory),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()


def ipxe_chain(tftp: Path, port: int, ferry_args: str) -> tuple[Path, str]:
    """What a site's DHCP/TFTP hands out: a script that sets the kernel keys
    and chains the bundle's script over HTTP."""
    tftp.mkdir(exist_ok=True)
    (tftp / "boot.ipxe").write_text(
        f"#!ipxe\nset ferry_args {ferry_args}\n"
        f"chain http://10.0.2.2:{port}/ferry.ipxe\n"
    )
    return tftp, "boot.ipxe"


def iso_with_unchecked_keys(live_image, dest: Path, kernel_keys: str) -> Path:
    """An ISO whose default entry carries keys `make image` would refuse,
    to see the live side report and refuse them too."""
    from image import assemble, build
    from image.steps import BuildLog

    log = BuildLog(dest.with_suffix(".log"), None)
    try:
        assemble.make_iso(
            live_image.kernel,
            live_image.initrd,
            dest,
            build.built_keys(live_image),
            log,
            kernel_keys,
        )
    finally:
        log.close()
    return dest
