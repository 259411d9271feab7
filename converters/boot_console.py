"""Make a guest say on its serial console how far it boots.

Many real servers print nothing on ttyS0: their kernel and GRUB talk to the
screen, which a boot check does not have. So, in the boot check's throwaway
overlay only (never in the converted disk), GRUB gets a serial terminal,
every kernel line gets `console=tty0 console=ttyS0,115200n8` (without
`quiet`/`splash`, so the kernel's and systemd's lines show where a boot
stops), and a oneshot unit prints `FERRY-BOOT-CHECK userspace` on ttyS0 as
soon as systemd runs from the real root with the local filesystems mounted.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from converters.boot_stages import USERSPACE_MARKER

log = logging.getLogger(__name__)

CONSOLE_ARGS = "console=tty0 console=ttyS0,115200n8"
# Where GRUB's generated configurations live: BIOS and EFI builds, the
# distributions' ESP folders (Debian's is a stub that loads /boot/grub's),
# the removable path.
GRUB_CONFIGS = (
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/boot/efi/EFI/*/grub.cfg",
    "/efi/EFI/*/grub.cfg",
    "/boot/EFI/*/grub.cfg",
)
SERIAL_TERMINAL = (
    "# added by ferry's boot check (throwaway overlay only)\n"
    "serial --unit=0 --speed=115200\n"
    "terminal_input console serial\n"
    "terminal_output console serial\n"
)
_KERNEL_LINE = re.compile(r"^(\s*linux(?:efi|16)?\s+\S+)(.*)$", re.M)
_QUIET = re.compile(r"(?<!\S)(?:quiet|splash)(?!\S)")
_FIRST_ENTRY = re.compile(r"^\s*(?:menuentry|submenu)\b", re.M)

UNIT_NAME = "ferry-boot-check.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
WANTS_DIR = "/etc/systemd/system/sysinit.target.wants"
# Early (sysinit) rather than multi-user: the check ends as soon as the real
# root runs systemd with its filesystems, which is what a conversion can
# break; waiting for the services would add a minute under TCG. Requires=
# keeps it silent when a mount of fstab fails (emergency mode instead).
UNIT = f"""[Unit]
Description=ferry boot check: userspace reached
DefaultDependencies=no
Requires=local-fs.target
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{USERSPACE_MARKER}" > /dev/ttyS0'

[Install]
WantedBy=sysinit.target
"""
SYSTEMD = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")


def serial_grub_cfg(text: str) -> str:
    """A grub.cfg whose menu and kernels talk on ttyS0. The terminal goes
    before the first entry, after the header's own terminal settings (a
    gfxterm there would otherwise win); a stub without entries gets it at
    the top."""

    def kernel(m: re.Match) -> str:
        args = _QUIET.sub("", m.group(2)).rstrip()
        if "console=ttyS0" not in args:
            args += " " + CONSOLE_ARGS
        return m.group(1) + args

    body = _KERNEL_LINE.sub(kernel, text)
    first = _FIRST_ENTRY.search(body)
    at = first.start() if first else 0
    return body[:at] + SERIAL_TERMINAL + body[at:]


@dataclass(frozen=True)
class Prepared:
    grub_configs: tuple[str, ...]
    unit: bool  # False: no systemd in the guest (the login prompt still counts)


def prepare(guest) -> Prepared:
    """`guest` is a fixups.guestfs_backend.Guest on the overlays, mounted."""
    configs = []
    for pattern in GRUB_CONFIGS:
        for path in guest.glob(pattern):
            if guest.is_file(path):
                guest.write(path, serial_grub_cfg(guest.read(path)))
                configs.append(path)
    unit = any(guest.exists(p) for p in SYSTEMD)
    if unit:
        guest.write(UNIT_PATH, UNIT)
        guest.mkdir_p(WANTS_DIR)
        guest.g.ln_sf(UNIT_PATH, f"{WANTS_DIR}/{UNIT_NAME}")
    log.info("boot check console: %s; marker unit %s", configs, unit)
    return Prepared(tuple(configs), unit)
