"""Where a boot stopped, read from real serial consoles: excerpts of boots
run on this host (tests/unit/data/boot-consoles/, escape sequences and all):

- initramfs-tools-no-root: ferry's boot check of the unconverted phys-bios
  capture on virtio (ALERT! /dev/sda1 does not exist);
- initramfs-tools-userspace: the boot check of vm-virtio, which boots on
  virtio as it is, up to the check's own marker;
- dracut-uefi-lvm-userspace: the boot check of the converted phys-uefi-lvm
  (OVMF, GRUB, dracut's systemd initrd, LVM root) up to the marker;
- dracut-uefi-lvm-no-root: the boot check of the unconverted phys-uefi-lvm
  (its dracut omits virtio): the initqueue's timeout warnings, then
  "Could not boot" and dracut's emergency shell;
- seabios-no-bootable-device, ovmf-no-bootable-disk: an empty disk on the
  boot check's machine (graphics=off, restrict=on NIC), BIOS and UEFI;
- kernel-panic-no-root: Debian's kernel with no root and no initramfs.

Cut consoles stand for a boot still on its way: no verdict until the
decisive line is there. GRUB's and systemd's emergency failures, which no
boot here produced, are checked on their tools' own messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters import boot_stages as stages

DATA = Path(__file__).parent / "data" / "boot-consoles"


def console(name: str) -> str:
    return (DATA / f"{name}.log").read_text(errors="replace")


@pytest.mark.parametrize(
    ("name", "stage", "what", "line"),
    [
        (
            "initramfs-tools-no-root",
            "initramfs",
            "in the initramfs waiting for the root disk",
            "ALERT!  /dev/sda1 does not exist.  Dropping to a shell!",
        ),
        (
            "initramfs-tools-userspace",
            "userspace",
            "reached userspace",
            "FERRY-BOOT-CHECK userspace",
        ),
        (
            "dracut-uefi-lvm-userspace",
            "userspace",
            "reached userspace",
            "FERRY-BOOT-CHECK userspace",
        ),
        (
            "dracut-uefi-lvm-no-root",
            "initramfs",
            "in the initramfs waiting for the root disk",
            'Warning: "/dev/ferry/root" does not exist',
        ),
        (
            "seabios-no-bootable-device",
            "firmware",
            "in the firmware: no bootable disk",
            "No bootable device.",
        ),
        (
            "ovmf-no-bootable-disk",
            "firmware",
            "in the firmware: no bootable disk",
            'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from '
            "PciRoot(0x0)/Pci(0x1,0x0): Not Found",
        ),
        (
            "kernel-panic-no-root",
            "kernel panic",
            "at a kernel panic",
            "Kernel panic - not syncing: VFS: Unable to mount root fs on "
            "unknown-block(0,0)",
        ),
    ],
)
def test_a_real_console_is_classified_where_it_stopped(name, stage, what, line):
    verdict = stages.classify(console(name))
    assert (verdict.stage, verdict.decisive, verdict.what) == (stage, True, what)
    assert verdict.line == line
    assert verdict.boots == (stage == "userspace")


def test_a_boot_still_on_its_way_has_no_verdict_and_names_its_furthest_stage():
    text = console("initramfs-tools-no-root")
    cuts = {
        "Welcome to GRUB!": "bootloader",
        "Linux version 6.1": "kernel",
        "Begin: Waiting for root file system": "initramfs",
    }
    for cut, stage in cuts.items():
        head = text[: text.index(cut) + len(cut)]
        verdict = stages.classify(head)
        assert not verdict.decisive, (cut, verdict)
        assert verdict.stage == stage, (cut, verdict)
    assert stages.classify("").stage == "firmware"


def test_dracuts_initrd_reaching_its_targets_is_still_the_initramfs():
    # the initrd's systemd reaches local-fs, basic and initrd.target; the
    # real root greets without "(Initramfs)"
    booting = console("dracut-uefi-lvm-userspace")
    real_root = booting.index(
        "Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!"
    )
    in_initrd = stages.classify(booting[:real_root])
    assert "Reached target" in booting[:real_root]
    assert (in_initrd.stage, in_initrd.decisive) == ("initramfs", False)
    after = stages.classify(booting[: real_root + 60])
    assert (after.stage, after.decisive) == ("userspace", False)
    assert after.what == "in the system after the initramfs"


def test_the_real_roots_systemd_is_userspace_and_dracuts_initrd_is_not():
    booting = console("initramfs-tools-userspace")
    before_marker = booting[: booting.index(stages.USERSPACE_MARKER)]
    assert stages.classify(before_marker).stage == "userspace"  # "Welcome to Debian"
    assert not stages.classify(before_marker).decisive
    initrd = "Welcome to Debian GNU/Linux 12 (bookworm) dracut-059-4 (Initramfs)!\n"
    assert stages.classify("Linux version 6.1.0\n" + initrd).stage == "initramfs"
    # the initrd reaches its own targets, not multi-user
    assert not stages.classify(initrd + "[  OK  ] Reached target basic.target\n").boots
    multi = "[  OK  ] Reached target multi-user.target - Multi-User System.\n"
    assert stages.classify(initrd + multi).boots
    assert stages.classify("\nphys-bios login: ").boots


@pytest.mark.parametrize(
    ("text", "stage", "what"),
    [
        (
            'Warning: "/dev/mapper/ferry-root" does not exist\n',
            "initramfs",
            "in the initramfs waiting for the root disk",
        ),
        ("dracut:/# ", "initramfs", "in the initramfs's emergency shell"),
        (
            "Welcome to Debian GNU/Linux 12 (bookworm)!\n"
            "You are in emergency mode. After logging in, type "
            '"journalctl -xb" to view system logs\n',
            "emergency mode",
            "in emergency mode",
        ),
        (
            "Welcome to GRUB!\nerror: file `/vmlinuz-6.1.0-50-amd64' not found.\n"
            "error: you need to load the kernel first.\n\n"
            "Press any key to continue...",
            "bootloader",
            "in the bootloader",
        ),
        ("GRUB loading.\nWelcome to GRUB!\n\ngrub rescue> ", "bootloader", None),
    ],
)
def test_dracut_systemd_and_grub_failures(text, stage, what):
    verdict = stages.classify(text)
    assert verdict.decisive and verdict.stage == stage, verdict
    if what:
        assert verdict.what == what


def test_dracuts_initqueue_timeout_is_no_verdict_until_it_gives_up():
    # its timeout scripts may still assemble a degraded RAID that boots
    text = console("dracut-uefi-lvm-no-root")
    waiting = text[: text.index("Warning: Could not boot.")]
    assert "timeout, still waiting" in waiting
    verdict = stages.classify(waiting)
    assert not verdict.decisive and verdict.stage == "initramfs"
    assert "initqueue timed out" in verdict.what


def test_a_missing_root_that_led_to_a_panic_is_reported_as_the_initramfs():
    text = (
        console("initramfs-tools-no-root")
        + "\nKernel panic - not syncing: Attempted to kill init!\n"
    )
    assert stages.classify(text).stage == "initramfs"


def test_a_failure_the_boot_went_past_is_not_decisive():
    # OVMF reports one boot option failing, then boots the next
    text = (
        'BdsDxe: failed to load Boot0001 "UEFI PXEv4" from ...: Not Found\r\n'
        'BdsDxe: starting Boot0002 "UEFI Misc Device"\r\nWelcome to GRUB!\r\n'
    )
    verdict = stages.classify(text)
    assert not verdict.decisive and verdict.stage == "bootloader"
    # a data disk's mount complaint before the marker does not stop the check
    done = console("initramfs-tools-userspace")
    noisy = done.replace(
        stages.USERSPACE_MARKER,
        "Warning: /dev/sdb1 does not exist\n" + stages.USERSPACE_MARKER,
    )
    assert stages.classify(noisy).boots


def test_last_lines_are_readable_and_a_waiting_loop_is_one_line():
    lines = stages.last_lines(console("initramfs-tools-no-root"), 8)
    assert lines[-1] == "(initramfs)"
    assert "ALERT!  /dev/sda1 does not exist.  Dropping to a shell!" in lines
    repeated = [ln for ln in lines if "local-block" in ln]
    assert len(repeated) == 1 and "(repeated " in repeated[0], lines
    assert not any("\x1b" in ln or "\r" in ln for ln in lines)
