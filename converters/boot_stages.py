"""Where a boot got to, read from its serial console.

Pure text in, a verdict out: `classify(console)` looks for the first
decisive sign (the system reached userspace, or a failure that no boot
recovers from without a person) and otherwise names the furthest stage the
console shows, which is where a boot that ran out of time was stuck.

The signs are what the firmware, GRUB, the kernel, initramfs-tools, dracut
and systemd print on a serial console; the unit tests hold real excerpts of
each (tests/unit/data/boot-consoles/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Stages in boot order; a failure names the stage it stopped in.
FIRMWARE, BOOTLOADER, KERNEL, INITRAMFS, USERSPACE = (
    "firmware",
    "bootloader",
    "kernel",
    "initramfs",
    "userspace",
)
PANIC, EMERGENCY = "kernel panic", "emergency mode"
ORDER = (FIRMWARE, BOOTLOADER, KERNEL, INITRAMFS, USERSPACE)

# What the boot check's own unit prints once systemd runs from the real root
# with the local filesystems mounted.
USERSPACE_MARKER = "FERRY-BOOT-CHECK userspace"


@dataclass(frozen=True)
class Sign:
    stage: str
    pattern: re.Pattern
    what: str  # how a person would say where it stopped


def _sign(stage: str, pattern: str, what: str) -> Sign:
    return Sign(stage, re.compile(pattern, re.MULTILINE), what)


_NO_ROOT = "in the initramfs waiting for the root disk"
_INITRAMFS_SHELL = "in the initramfs's emergency shell"
_NO_DISK = "in the firmware: no bootable disk"


# Decisive signs, by priority: userspace first (a booted system can carry
# harmless noise, say a data disk's "does not exist", before it), then the
# failures, each ignored when the console shows later progress past its
# stage (an OVMF boot option that failed before the next one booted). The
# initramfs's own words come before the panic or emergency mode they lead
# to, which name the symptom rather than the cause.
DECISIVE = (
    _sign(USERSPACE, re.escape(USERSPACE_MARKER), "reached userspace"),
    # only the real root's systemd reaches multi-user (dracut's initrd stops
    # at initrd.target), and a getty's prompt comes after it
    _sign(USERSPACE, r"Reached target .*Multi-User System.*", "reached userspace"),
    _sign(USERSPACE, r"^\S+ login: ?$", "reached userspace"),
    # initramfs-tools: the root device never appeared (after rootdelay)
    _sign(INITRAMFS, r"ALERT!\s+.*does not exist.*", _NO_ROOT),
    _sign(INITRAMFS, r"Gave up waiting for root.*", _NO_ROOT),
    # dracut: its initqueue gave up on the root device. Its earlier timeout
    # warning is no verdict: the timeout scripts it then runs may still
    # assemble a degraded RAID or a partial volume group that boots.
    _sign(INITRAMFS, r'Warning: "?/dev/\S+"? does not exist.*', _NO_ROOT),
    _sign(INITRAMFS, r".*Could not boot\.?", _NO_ROOT),
    _sign(INITRAMFS, r"Entering emergency mode.*|^dracut:/#", _INITRAMFS_SHELL),
    _sign(INITRAMFS, r"^\(initramfs\)", _INITRAMFS_SHELL),
    _sign(EMERGENCY, r"You are in emergency mode.*", "in emergency mode"),
    _sign(PANIC, r"Kernel panic - not syncing.*", "at a kernel panic"),
    # GRUB: no configuration or modules, or a menu entry that failed
    _sign(BOOTLOADER, r"grub rescue>", "in the bootloader (grub rescue)"),
    _sign(BOOTLOADER, r"^grub> ", "in the bootloader (grub shell)"),
    _sign(
        BOOTLOADER,
        r"error: .*(?:\n.*){0,3}?Press any key to continue",
        "in the bootloader",
    ),
    # SeaBIOS, then OVMF: nothing on any disk would boot
    _sign(FIRMWARE, r"No bootable device\.?", _NO_DISK),
    _sign(FIRMWARE, r"BdsDxe: failed to load .*", _NO_DISK),
    _sign(FIRMWARE, r"BdsDxe: No bootable option.*", _NO_DISK),
    _sign(FIRMWARE, r"^Shell> ", _NO_DISK),
)

# Progress: the furthest of these says where a boot that timed out was.
PROGRESS = (
    (BOOTLOADER, re.compile(r"GNU GRUB|Booting `|Loading Linux|Welcome to GRUB")),
    (KERNEL, re.compile(r"Linux version \d|Booting Linux|Decompressing Linux")),
    (
        INITRAMFS,
        re.compile(
            r"Run /init as init process|Loading, please wait|"
            r"Begin: Loading essential drivers|dracut-\S+\[\d+\]|"
            r"\(Initramfs\)|Starting dracut"
        ),
    ),
    # systemd from the real root greets without "(Initramfs)"; GRUB's
    # greeting is no system's
    (
        USERSPACE,
        re.compile(r"Switching root\.|^Welcome to (?!GRUB)(?!.*Initramfs).*!", re.M),
    ),
)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>c]")


@dataclass(frozen=True)
class Verdict:
    stage: str  # one of ORDER, PANIC or EMERGENCY
    decisive: bool  # False: the boot may still go on
    what: str  # "reached userspace", "in the initramfs waiting for ..."
    line: str = ""  # the console line that decided it

    @property
    def boots(self) -> bool:
        return self.decisive and self.stage == USERSPACE


def clean(console: str) -> str:
    """Console bytes as lines a person reads: no escape sequences, no CRs."""
    text = _ANSI.sub("", console)
    return "\n".join(line.split("\r")[-1] or line for line in text.split("\n"))


def classify(console: str) -> Verdict:
    text = clean(console)
    for sign in DECISIVE:
        for found in sign.pattern.finditer(text):
            if not _superseded(sign.stage, text[found.end() :]):
                line = found.group(0).splitlines()[0].strip()
                return Verdict(sign.stage, True, sign.what, line)
    stage = furthest(text)
    if stage == INITRAMFS and _INITQUEUE_TIMEOUT.search(text):
        return Verdict(stage, False, _INITQUEUE_WAITING)
    return Verdict(stage, False, f"in the {_stage_words(stage)}")


_INITQUEUE_TIMEOUT = re.compile(r"dracut-initqueue.*timeout")
_INITQUEUE_WAITING = "in the initramfs, dracut's initqueue timed out waiting"


def _superseded(stage: str, after: str) -> bool:
    """The boot went on past `stage` after this sign."""
    if stage not in ORDER:
        return False
    return ORDER.index(furthest(after)) > ORDER.index(stage)


def furthest(text: str) -> str:
    reached = FIRMWARE
    for stage, pattern in PROGRESS:
        if pattern.search(text):
            reached = stage
    return reached


def _stage_words(stage: str) -> str:
    return "system after the initramfs" if stage == USERSPACE else stage


def last_lines(console: str, count: int = 20) -> list[str]:
    """The console's last lines, a line repeated in a row shown once with
    its count (initramfs-tools prints the same line every second while it
    waits for the root disk)."""
    out: list[str] = []
    repeats = 0
    for line in (ln.rstrip() for ln in clean(console).splitlines()):
        if not line.strip():
            continue
        if out and line == out[-1].split(_REPEATED)[0]:
            repeats += 1
            out[-1] = f"{line}{_REPEATED}{repeats + 1} times)"
            continue
        repeats = 0
        out.append(line)
    return out[-count:]


_REPEATED = " (repeated "
