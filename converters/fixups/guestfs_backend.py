"""The guestfs backend: a guest on disk images, opened in the libguestfs
appliance (a small VM), its filesystems mounted as the guest mounts them.

The guest's own tools run through `g.command`, which chroots into the
mounted guest with /dev, /proc and /sys bound, so update-initramfs, dracut
and grub-mkconfig are the guest's versions with the guest's configuration.
On hosts without working KVM the appliance runs in TCG (accel.detect()).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from converters import accel
from converters.fixups.guest import (
    Filesystem,
    FixupError,
    GuestCommandError,
    Mount,
    UnsupportedGuest,
)

log = logging.getLogger(__name__)

# update-initramfs and dracut compress a few hundred MB of modules; the
# appliance's default of 1280 MB (libguestfs 1.48) is enough, but dracut
# with zstd was seen to need more headroom on big kernels.
MEMSIZE_MB = 2048
# Two vCPUs: QEMU runs TCG with one host thread per vCPU, and a phys-bios
# conversion (about 1400 forks of the guest's mkinitramfs, grub-mkconfig,
# threaded compression) took 15% less wall time than with one, measured
# side by side (docs/conversion.md). Under KVM it costs nothing either.
APPLIANCE_SMP = 2
# Mount points a conversion cannot do without; others are mounted if they
# can be and skipped with a warning if not (a data disk that is corrupt
# should not stop the OS disk being converted).
ESSENTIAL = ("/", "/boot", "/boot/efi", "/efi", "/usr")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STATUS = "ferry-exit-status="


class Guest:
    """GuestOS over a launched guestfs handle with the guest mounted."""

    backend = "guestfs"

    def __init__(self, g, root: str) -> None:
        self.g = g
        self.root = root  # the inspection root device
        self._filesystems: list[Filesystem] | None = None

    def read(self, path: str) -> str:
        return self.g.read_file(path).decode("utf-8", "surrogateescape")

    def write(self, path: str, text: str, mode: int | None = None) -> None:
        existed = self.g.exists(path)
        self.g.write(path, text.encode("utf-8", "surrogateescape"))
        if mode is not None or not existed:
            self.g.chmod(0o644 if mode is None else mode, path)

    def exists(self, path: str) -> bool:
        return self.g.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.g.is_dir(path, followsymlinks=True)

    def is_file(self, path: str) -> bool:
        return self.g.is_file(path, followsymlinks=True)

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.g.glob_expand(pattern, directoryslash=False))

    def mkdir_p(self, path: str) -> None:
        self.g.mkdir_p(path)

    def copy(self, src: str, dst: str) -> None:
        self.g.cp(src, dst)

    def remove(self, path: str) -> None:
        self.g.rm_f(path)

    def run_command(
        self, argv: list[str], env: dict[str, str] | None = None, quiet: bool = False
    ) -> str:
        # g.command returns stdout only and, on failure, only stderr: run
        # through sh so the log gets both, interleaved, and the status.
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        script = f'PATH={PATH} {assigns} "$@" 2>&1; echo "{_STATUS}$?"'
        log.debug("run %s", shlex.join(argv))
        try:
            out = self.g.command(["/bin/sh", "-c", script, "sh", *argv])
        except RuntimeError as e:
            raise GuestCommandError(argv, -1, str(e)) from e
        text, _, status = out.rstrip("\n").rpartition(_STATUS)
        lines = text.splitlines()
        if quiet:
            log.debug("  (%d lines of output)", len(lines))
        else:
            for line in lines:
                log.debug("  %s", line)
        if status.strip() != "0":
            raise GuestCommandError(argv, int(status or -1), text)
        return text

    def mounts(self) -> list[Mount]:
        return [Mount(dev, mp) for dev, mp in self.g.mountpoints().items()]

    def filesystems(self) -> list[Filesystem]:
        # Conversions make no filesystems: ask the appliance once.
        if self._filesystems is None:
            self._filesystems = self._list_filesystems()
        return list(self._filesystems)

    def _list_filesystems(self) -> list[Filesystem]:
        g = self.g
        devices = g.list_devices()
        partitions = set(g.list_partitions())
        lvs = set(g.lvs())
        found = []
        for dev, fstype in sorted(g.list_filesystems().items()):
            if fstype in ("unknown", ""):
                continue
            disk = part = None
            lv = ""
            if dev in partitions:
                disk = devices.index(g.part_to_dev(dev))
                part = g.part_to_partnum(dev)
            elif dev in devices:
                disk = devices.index(dev)
            elif dev in lvs:
                lv = g.lvm_canonical_lv_name(dev).removeprefix("/dev/")
            found.append(
                Filesystem(
                    dev,
                    fstype,
                    _quiet(g.vfs_uuid, dev),
                    _quiet(g.vfs_label, dev),
                    disk,
                    part,
                    lv,
                )
            )
        return found


def _quiet(fn, dev: str) -> str:
    try:
        return fn(dev)
    except RuntimeError:
        return ""


def _on_message(event, handle, buf, array) -> None:
    log.debug("guestfs: %s", buf.decode(errors="replace").rstrip())


def _handle(disks: list[Path], formats: list[str], readonly: bool):
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(accel.detect().guestfs_settings())
    g.set_memsize(MEMSIZE_MB)
    g.set_smp(APPLIANCE_SMP)
    g.set_event_callback(_on_message, guestfs.EVENT_LIBRARY | guestfs.EVENT_WARNING)
    for disk, fmt in zip(disks, formats, strict=True):
        g.add_drive_opts(str(disk), format=fmt, readonly=readonly)
    return g


def _mount_guest(g, what: str) -> str:
    roots = g.inspect_os()
    if not roots:
        raise UnsupportedGuest(what, ["an operating system: inspection found none"])
    if len(roots) > 1:
        raise UnsupportedGuest(
            what,
            [f"a single operating system: found {len(roots)} ({', '.join(roots)})"],
        )
    root = roots[0]
    if g.inspect_get_type(root) != "linux":
        raise UnsupportedGuest(
            what, [f"a Linux system: this one is {g.inspect_get_type(root)}"]
        )
    points = g.inspect_get_mountpoints(root)
    for mp in sorted(points, key=len):
        try:
            g.mount(points[mp], mp)
        except RuntimeError as e:
            if mp in ESSENTIAL:
                raise FixupError(f"cannot mount {points[mp]} on {mp}: {e}") from e
            log.warning("mount %s on %s failed, skipped: %s", points[mp], mp, e)
    return root


@contextmanager
def open_guest(
    disks: list[Path], formats: list[str] | None = None, readonly: bool = False
) -> Iterator[Guest]:
    """The guest on `disks` (in source order), mounted. Leaving the block
    unmounts and shuts the appliance down, which flushes every write; an
    error there is raised, since a conversion whose writes were not flushed
    must not be committed."""
    formats = formats or ["qcow2" if d.suffix == ".qcow2" else "raw" for d in disks]
    what = ", ".join(d.name for d in disks)
    g = _handle(disks, formats, readonly)
    try:
        log.debug("guestfs launch %s", what)
        g.launch()
        root = _mount_guest(g, what)
        yield Guest(g, root)
        g.umount_all()
        g.shutdown()
    finally:
        g.close()
