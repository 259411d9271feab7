"""Kernel modules in the initramfs of every installed kernel, put there by
the guest's own tool (update-initramfs or dracut) and then checked in the
image itself (lsinitramfs / lsinitrd): a tool that exits 0 but leaves a
driver out would otherwise be found only when the VM fails to boot.

P2V needs the virtio drivers; V2P passes the drivers the live side found on
the real hardware. Both get every module those need too (module_deps), put
where the guest's configuration cannot leave them out: dracut's
`add_drivers` (which also takes them out of the guest's `omit_drivers`) and
initramfs-tools' modules file (taken under every `MODULES=` policy), with
the guest's blacklists of them made harmless first (blacklists).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

from converters.events import EventStream
from converters.fixups import blacklists, module_deps
from converters.fixups.guest import FixupError, GuestOS
from converters.fixups.inspect import GuestInfo, Kernel, find_program
from converters.fixups.module_deps import Closure

# virtio_pci finds the devices, virtio_blk/virtio_scsi carry the root disk,
# virtio_net the NIC (for network root and early networking), virtio_console
# the guest agent channel and hvc consoles.
VIRTIO_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_console",
)
MODULES_FILE = "/etc/initramfs-tools/modules"
# Last of the usual drop-ins, so a guest file that assigns add_drivers= (not
# +=) before it cannot empty the list for the guest's own later rebuilds.
DRACUT_CONF = "/etc/dracut.conf.d/99-ferry-drivers.conf"
MARK = "# Added by ferry: drivers for the target hardware and the modules they need"
_MODULE_FILE = re.compile(r"([^/\s]+\.ko(?:\.(?:xz|zst|gz))?)(?=\s|$)", re.M)


def closure(guest: GuestOS, kernel: Kernel, modules: Iterable[str]) -> Closure:
    """`modules` and what they need, from `kernel`'s own depmod files."""
    return module_deps.closure(module_deps.read(guest, kernel.modules), modules)


def check(guest: GuestOS, info: GuestInfo, modules=VIRTIO_MODULES) -> list[str]:
    """Modules some kernel does not ship at all: no tool can add those."""
    gaps = []
    for kernel in info.kernels:
        found = closure(guest, kernel, modules)
        if found.absent:
            names = ", ".join(found.why(m) for m in found.absent)
            gaps.append(f"kernel {kernel.version}: modules {names}")
    return gaps


def _add_to_modules_file(guest: GuestOS, modules) -> None:
    text = guest.read(MODULES_FILE) if guest.is_file(MODULES_FILE) else ""
    listed = {ln.split()[0] for ln in text.splitlines() if ln.strip() and ln[0] != "#"}
    wanted = [m for m in modules if m not in listed]
    if wanted:
        # initramfs-tools takes this file under every MODULES= policy,
        # including MODULES=list, where it is the only source.
        text = text + ("" if not text or text.endswith("\n") else "\n")
        guest.mkdir_p(posixpath.dirname(MODULES_FILE))
        guest.write(MODULES_FILE, text + MARK + "\n" + "\n".join(wanted) + "\n")


def _write_dracut_conf(guest: GuestOS, modules) -> None:
    # dracut 059 installs add_drivers on top of an exclusive drivers= and
    # whatever hostonly says (`hostonly='' instmods -c $add_drivers`), and
    # drops from omit_drivers the names add_drivers has: dracut-install's
    # omit regex (-N) would filter them out as dependencies of the drivers
    # too. So the dependencies are named here as well.
    guest.mkdir_p(posixpath.dirname(DRACUT_CONF))
    guest.write(DRACUT_CONF, f'{MARK}\nadd_drivers+=" {" ".join(modules)} "\n')


def _rebuild(guest: GuestOS, info: GuestInfo, kernel: Kernel, needed: Closure) -> None:
    if info.initramfs_tool == "initramfs-tools":
        mode = "-u" if guest.exists(kernel.initramfs) else "-c"
        guest.run_command(["update-initramfs", mode, "-k", kernel.version])
    elif info.initramfs_tool == "dracut":
        # --add-drivers is appended after every conf file has been read, so
        # no guest conf sorted after ferry's can take the drivers away.
        extra = ["--add-drivers", " ".join(needed.loadable)] if needed.loadable else []
        argv = ["dracut", "--force", *extra, kernel.initramfs, kernel.version]
        guest.run_command(argv)
    else:
        raise FixupError("no initramfs tool in the guest")


def listing(guest: GuestOS, info: GuestInfo, kernel: Kernel) -> str:
    """The file list of a kernel's initramfs, by the lister of the tool that
    made it when the guest has it (Debian's dracut also ships lsinitramfs)."""
    order = ["lsinitramfs", "lsinitrd"]
    if info.initramfs_tool == "dracut":
        order.reverse()
    for tool in order:
        if find_program(guest, tool):
            return guest.run_command([tool, kernel.initramfs], quiet=True)
    raise FixupError("neither lsinitramfs nor lsinitrd in the guest to verify with")


def modules_in_image(text: str) -> set[str]:
    """Module names of the .ko files in a listing (lsinitramfs prints
    paths, lsinitrd `ls -l` lines)."""
    return {module_deps.module_name(m) for m in _MODULE_FILE.findall(text)}


def missing(needed: Closure, held: set[str]) -> list[str]:
    """What the image lacks, each dependency with what needs it, grouped:
    ["virtio_blk", "virtio_ring, virtio (needed by virtio_pci)"]."""
    parts = [m for m in needed.wanted if m not in held and m not in needed.builtin]
    groups: dict[tuple[str, ...], list[str]] = {}
    for m in needed.needs:
        if m not in held:
            groups.setdefault(needed.needed_by[m], []).append(m)
    parts += [
        f"{', '.join(ms)} (needed by {', '.join(by)})" for by, ms in groups.items()
    ]
    return parts


def verify(guest: GuestOS, info: GuestInfo, kernel: Kernel, needed: Closure) -> str:
    """Raise unless every module of `needed` is in the rebuilt image or built
    in; returns what the image holds, for the log."""
    held = modules_in_image(listing(guest, info, kernel))
    gaps = missing(needed, held)
    if gaps:
        raise FixupError(f"{kernel.initramfs} lacks {'; '.join(gaps)}")
    said = f"{kernel.initramfs} holds {' '.join(m for m in needed.wanted if m in held)}"
    if needed.needs:
        said += f" and their dependencies {' '.join(needed.needs)}"
    if needed.builtin:
        said += f"; built into the kernel: {' '.join(sorted(needed.builtin))}"
    return said


def ensure_modules(
    guest: GuestOS,
    info: GuestInfo,
    modules=VIRTIO_MODULES,
    events: EventStream | None = None,
) -> None:
    """Configure the guest's tool to include `modules` and everything they
    need, rebuild every kernel's initramfs with it and verify each image."""
    needed = {k.version: closure(guest, k, modules) for k in info.kernels}
    everything = list(dict.fromkeys(m for c in needed.values() for m in c.loadable))
    named = {m for c in needed.values() for m in c.wanted + c.needs}
    for change in blacklists.unblock(guest, named):
        if events:
            events.log(f"initramfs: {change}")
    if info.initramfs_tool == "initramfs-tools":
        _add_to_modules_file(guest, everything)
    elif info.initramfs_tool == "dracut":
        _write_dracut_conf(guest, everything)
    for kernel in info.kernels:
        if events:
            events.log(f"initramfs: {info.initramfs_tool} for {kernel.version}")
        _rebuild(guest, info, kernel, needed[kernel.version])
        held = verify(guest, info, kernel, needed[kernel.version])
        if events:
            events.log(f"initramfs: {held}")
