"""The one interface every guest-OS operation goes through.

A backend gives access to an installed system whose filesystems are already
mounted where the guest mounts them: the guestfs backend works on images on
the KVM side (P2V, import), a chroot backend on a real disk mounted in the
live environment (V2P). The operation modules (inspect, initramfs,
device_names, nic_names, bootloader) see only this protocol, so they run
unchanged on either side.

Paths are the guest's own absolute paths ("/etc/fstab"), never the host's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class FixupError(Exception):
    """A fixup could not be done; the message says which and why."""


class UnsupportedGuest(FixupError):
    """The guest lacks something a conversion needs. Raised by the checks
    that run before anything is written, so the disk is left as it was."""

    def __init__(self, what: str, missing: list[str]) -> None:
        self.what = what
        self.missing = missing
        lines = "".join(f"\n  - {m}" for m in missing)
        super().__init__(f"cannot convert {what}; missing:{lines}")


class GuestCommandError(FixupError):
    """A command of the guest's own (update-initramfs, dracut, grub-mkconfig)
    failed; `output` is what it printed, for the log."""

    def __init__(self, argv: list[str], status: int, output: str) -> None:
        self.argv = argv
        self.status = status
        self.output = output
        tail = output.strip().splitlines()[-3:]
        super().__init__(
            f"{' '.join(argv)} exited with status {status}"
            + (": " + " | ".join(tail) if tail else "")
        )


@dataclass(frozen=True)
class Filesystem:
    """A filesystem (or swap, or LUKS container) on the guest's disks."""

    device: str  # as the backend names it: /dev/sda1, /dev/ferry/root
    fstype: str
    uuid: str = ""
    label: str = ""
    # Where it lives, to resolve names the source machine used (/dev/sdb2):
    disk: int | None = None  # index of its disk in source order
    partition: int | None = None  # None: the whole disk, or not a partition
    lv: str = ""  # "vg/lv" for an LVM logical volume


@dataclass(frozen=True)
class Mount:
    device: str  # backend's name of the mounted device
    mountpoint: str  # in the guest


class GuestOS(Protocol):
    """What fixups may do to a guest. Implemented by guestfs_backend.Guest."""

    backend: str  # "guestfs" or "chroot": for messages only

    def read(self, path: str) -> str: ...

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        """Create or replace a file; an existing file keeps its mode unless
        `mode` is given, a new one gets `mode` or 0644."""
        ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def is_file(self, path: str) -> bool: ...

    def glob(self, pattern: str) -> list[str]: ...

    def mkdir_p(self, path: str) -> None: ...

    def copy(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def run_command(
        self, argv: list[str], env: dict[str, str] | None = None, quiet: bool = False
    ) -> str:
        """Run a program of the guest's with the guest's root as `/`; returns
        its output (stdout and stderr) or raises GuestCommandError. The
        output goes to the log unless `quiet` (listings)."""
        ...

    def mounts(self) -> list[Mount]: ...

    def filesystems(self) -> list[Filesystem]: ...
