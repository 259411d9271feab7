"""Kernel modules in the initramfs of every installed kernel, put there by
the guest's own tool (update-initramfs or dracut) and then checked in the
image itself (lsinitramfs / lsinitrd): a tool that exits 0 but leaves a
driver out would otherwise be found only when the VM fails to boot.

P2V needs the virtio drivers; V2P will pass the drivers the live side found
on the real hardware.
"""

from __future__ import annotations

import posixpath
import re

from converters.events import EventStream
from converters.fixups.guest import FixupError, GuestOS
from converters.fixups.inspect import GuestInfo, Kernel, find_program

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
DRACUT_CONF = "/etc/dracut.conf.d/90-ferry-drivers.conf"
MARK = "# Added by ferry convert: drivers for the target hardware"


def _name(path: str) -> str:
    base = posixpath.basename(path.strip().rstrip(":"))
    return base.split(".ko", 1)[0].replace("-", "_")


def shipped(guest: GuestOS, kernel: Kernel) -> tuple[set[str], set[str]]:
    """(loadable modules, built-in modules) of a kernel, by name."""
    loadable, builtin = set(), set()
    dep = f"{kernel.modules}/modules.dep"
    if guest.is_file(dep):
        for line in guest.read(dep).splitlines():
            if ":" in line:
                loadable.add(_name(line.split(":", 1)[0]))
    built = f"{kernel.modules}/modules.builtin"
    if guest.is_file(built):
        builtin = {_name(line) for line in guest.read(built).splitlines() if line}
    return loadable, builtin


def check(guest: GuestOS, info: GuestInfo, modules=VIRTIO_MODULES) -> list[str]:
    """Modules some kernel does not ship at all: no tool can add those."""
    gaps = []
    for kernel in info.kernels:
        loadable, builtin = shipped(guest, kernel)
        absent = [m for m in modules if m not in loadable | builtin]
        if absent:
            gaps.append(f"kernel {kernel.version}: modules {', '.join(absent)}")
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
    # drivers= in dracut.conf is exclusive, but dracut installs add_drivers
    # on top of it (dracut 059: `instmods -c $add_drivers` after $drivers),
    # so one added file works whatever the guest's own configuration says.
    guest.mkdir_p(posixpath.dirname(DRACUT_CONF))
    guest.write(DRACUT_CONF, f'{MARK}\nadd_drivers+=" {" ".join(modules)} "\n')


def _rebuild(guest: GuestOS, info: GuestInfo, kernel: Kernel) -> None:
    if info.initramfs_tool == "initramfs-tools":
        mode = "-u" if guest.exists(kernel.initramfs) else "-c"
        guest.run_command(["update-initramfs", mode, "-k", kernel.version])
    elif info.initramfs_tool == "dracut":
        guest.run_command(["dracut", "--force", kernel.initramfs, kernel.version])
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


def missing_from_image(text: str, modules, builtin: set[str]) -> list[str]:
    gaps = []
    for m in modules:
        if m in builtin:
            continue
        pattern = "/" + re.escape(m).replace("_", "[-_]") + r"\.ko(\.[a-z]+)?\b"
        if not re.search(pattern, text):
            gaps.append(m)
    return gaps


def verify(guest: GuestOS, info: GuestInfo, kernel: Kernel, modules) -> None:
    _, builtin = shipped(guest, kernel)
    gaps = missing_from_image(listing(guest, info, kernel), modules, builtin)
    if gaps:
        raise FixupError(f"{kernel.initramfs} was rebuilt but lacks {', '.join(gaps)}")


def ensure_modules(
    guest: GuestOS,
    info: GuestInfo,
    modules=VIRTIO_MODULES,
    events: EventStream | None = None,
) -> None:
    """Configure the guest's tool to include `modules`, rebuild every
    kernel's initramfs with it and verify each image."""
    if info.initramfs_tool == "initramfs-tools":
        _add_to_modules_file(guest, modules)
    elif info.initramfs_tool == "dracut":
        _write_dracut_conf(guest, modules)
    for kernel in info.kernels:
        if events:
            events.log(f"initramfs: {info.initramfs_tool} for {kernel.version}")
        _rebuild(guest, info, kernel)
        verify(guest, info, kernel, modules)
        if events:
            events.log(f"initramfs: {kernel.initramfs} holds {' '.join(modules)}")
