"""The boot configurations: GRUB on the ISO (BIOS and UEFI, console and
serial), an iPXE script and a GRUB netboot configuration for PXE. Each loads
the same kernel and the one initramfs; ``ferry.*`` keys for unattended runs
are appended by whoever boots it (docs/unattended.md)."""

from __future__ import annotations

import re

# The serial console last: it becomes /dev/console, where systemd reports
# the boot, and what a datacenter's serial-over-LAN shows.
KERNEL_ARGS = "console=tty0 console=ttyS0,115200n8"

_GRUB_TERMINALS = """\
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
"""


def _entry(title: str, path: str, *args: str) -> str:
    line = " ".join(a for a in (KERNEL_ARGS, *args) if a)
    return (
        f'menuentry "{title}" {{\n'
        '    echo "Loading the ferry live environment (all in memory once'
        ' loaded) ..."\n'
        f"    linux {path}/vmlinuz {line}\n"
        f"    initrd {path}/initrd.img\n"
        "}\n"
    )


def _entries(path: str, extra: str = "") -> str:
    return (
        _entry("ferry live environment", path, extra)
        + _entry("ferry live environment: shell only", path, "ferry.mode=shell", extra)
        + _entry(
            "ferry live environment: all kernel messages",
            path,
            "ignore_loglevel",
            extra,
        )
    )


def _grub_quoted(words: str) -> str:
    """Each word that GRUB's script parser would not take as it is (a
    `{mac}` hostname pattern is a syntax error that loses the whole menu
    entry) in single quotes, which GRUB removes before the kernel sees it."""
    plain = re.compile(r"[A-Za-z0-9_.,:=/+@%-]+")
    return " ".join(w if plain.fullmatch(w) else f"'{w}'" for w in words.split())


def iso_grub_cfg(label: str, kernel_keys: str = "") -> str:
    """With `kernel_keys` (ferry.* keys for an unattended run) the first,
    default entry carries them; the plain entries follow."""
    unattended = (
        _entry("ferry live environment: unattended", "/boot", _grub_quoted(kernel_keys))
        if kernel_keys
        else ""
    )
    return (
        f"# ferry live environment {label} (made by image/build.py)\n"
        + _GRUB_TERMINALS
        + "set timeout=3\nset default=0\n\n"
        + unattended
        + _entries("/boot")
    )


def netboot_grub_cfg() -> str:
    return (
        "# GRUB network boot of the ferry live environment (grub-mknetdir).\n"
        "# Put this folder on the TFTP or HTTP server as /ferry, or set\n"
        "# ferry_dir before loading this file; GRUB fetches from the server\n"
        "# it booted from. Unattended: set ferry_args to ferry.* keys.\n"
        'if [ -z "$ferry_dir" ]; then set ferry_dir=/ferry; fi\n'
        + _GRUB_TERMINALS
        + "set timeout=3\nset default=0\n\n"
        + _entries("$ferry_dir", "$ferry_args")
    )


def ipxe_script() -> str:
    return (
        "#!ipxe\n"
        "# ferry live environment over the network (made by image/build.py).\n"
        "# vmlinuz and initrd.img are fetched relative to this script's own\n"
        "# URL: serve this folder over HTTP (TFTP is slow for the initramfs)\n"
        "# and chain it, e.g. chain http://HOST/ferry/ferry.ipxe\n"
        "# Unattended runs: set ferry_args to ferry.* keys before chaining,\n"
        "# e.g. set ferry_args ferry.mode=p2v ferry.server=HOST:PORT ...\n"
        "echo Loading the ferry live environment ...\n"
        f"kernel vmlinuz initrd=initrd.img {KERNEL_ARGS} ${{ferry_args}}\n"
        "initrd initrd.img\n"
        "boot\n"
    )
