"""The guest's own tool gets the drivers and every module they need, every
kernel's image is rebuilt, and an image that still lacks one of them (a
driver or a dependency) is an error, not a surprise at boot."""

from __future__ import annotations

import pytest

from converters.events import EventStream, Log
from converters.fixups import initramfs
from converters.fixups.guest import FixupError
from converters.fixups.inspect import GuestInfo, Kernel
from tests.unit.debian_kernel_modules import ALIAS, BUILTIN, DEP, SOFTDEP
from tests.unit.fake_guest import FakeGuest

K1 = Kernel(
    "6.1.0-1",
    "/boot/vmlinuz-6.1.0-1",
    "/boot/initrd.img-6.1.0-1",
    "/lib/modules/6.1.0-1",
)
K2 = Kernel(
    "6.1.0-2",
    "/boot/vmlinuz-6.1.0-2",
    "/boot/initrd.img-6.1.0-2",
    "/lib/modules/6.1.0-2",
)
VIRTIO_CLOSURE = [
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_console",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio",
    "virtio_ring",
    "scsi_mod",
    "scsi_common",
    "net_failover",
    "failover",
]
# The AHCI machine's needs as deploy_fixups finds them on it.
AHCI = ("sd_mod", "ahci", "e1000", "xfs")


def info(tool: str, kernels=(K1, K2)) -> GuestInfo:
    return GuestInfo(
        "debian",
        "debian",
        "12",
        "Debian 12",
        "h",
        kernels,
        tool,
        None,
        "bios",
        "/dev/sda1",
    )


def paths(kernel: Kernel, dep: str = DEP) -> dict[str, str]:
    """module name -> its path in an image built for `kernel`."""
    out = {}
    for line in dep.splitlines():
        path = line.split(":", 1)[0]
        name = path.rsplit("/", 1)[1].split(".ko")[0].replace("-", "_")
        out[name] = f"usr/lib/modules/{kernel.version}/{path}"
    return out


def guest_with_kernels(tmp_path, dep=DEP, builtin=BUILTIN) -> FakeGuest:
    guest = FakeGuest(tmp_path)
    for k in (K1, K2):
        guest.put(f"{k.modules}/modules.dep", dep)
        guest.put(f"{k.modules}/modules.softdep", SOFTDEP)
        guest.put(f"{k.modules}/modules.builtin", builtin)
        guest.put(f"{k.modules}/modules.alias", ALIAS)
        guest.put(k.initramfs, "old image")
    return guest


def lsinitramfs(held, without=()):
    """lsinitramfs of images holding `held` (each kernel's own paths)."""

    def run(argv):
        k = next(k for k in (K1, K2) if k.initramfs == argv[1])
        return "\n".join(paths(k)[m] for m in held if m not in without)

    return run


def lsinitrd(held, without=()):
    """lsinitrd's `ls -l` lines, modules compressed as dracut does."""

    def run(argv):
        k = next(k for k in (K1, K2) if k.initramfs == argv[1])
        return "\n".join(
            f"-rw-r--r--   1 root     root   9 Jan  1 00:00 {paths(k)[m]}.xz"
            for m in held
            if m not in without
        )

    return run


def logged(events: EventStream) -> list[str]:
    lines: list[str] = []
    events.subscribe(lambda e: lines.append(e.message) if isinstance(e, Log) else None)
    return lines


def test_initramfs_tools_gets_drivers_and_dependencies_and_every_kernel_rebuilt(
    tmp_path,
):
    guest = guest_with_kernels(tmp_path)
    guest.put("/usr/bin/lsinitramfs", "")
    guest.put("/etc/initramfs-tools/modules", "# list\nahci\nvirtio_blk\n")
    guest.commands = {
        "update-initramfs": lambda argv: "",
        "lsinitramfs": lsinitramfs(VIRTIO_CLOSURE),
    }
    initramfs.ensure_modules(guest, info("initramfs-tools"))
    modules = guest.read("/etc/initramfs-tools/modules").splitlines()
    assert modules[:3] == ["# list", "ahci", "virtio_blk"]
    assert modules[3].startswith("# Added by ferry")
    assert modules[4:] == [m for m in VIRTIO_CLOSURE if m != "virtio_blk"]
    assert ["update-initramfs", "-u", "-k", "6.1.0-1"] in guest.ran
    assert ["update-initramfs", "-u", "-k", "6.1.0-2"] in guest.ran


def test_dracut_conf_and_command_line_name_drivers_and_dependencies(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.put(
        "/etc/dracut.conf.d/10-hardware.conf",
        'drivers="ahci sd_mod ext4 dm_mod"\n'
        'omit_drivers+=" virtio virtio_blk virtio_scsi virtio_pci virtio_net '
        'virtio_ring "\n',
    )
    guest.put("/usr/bin/lsinitrd", "")
    guest.commands = {"dracut": lambda argv: "", "lsinitrd": lsinitrd(VIRTIO_CLOSURE)}
    events = EventStream()
    log = logged(events)
    initramfs.ensure_modules(guest, info("dracut"), events=events)
    # add_drivers is what takes a name out of omit_drivers (dracut.sh's
    # omit_drivers_corrected), so every module of the closure is in it.
    conf = guest.read(initramfs.DRACUT_CONF)
    assert f'add_drivers+=" {" ".join(VIRTIO_CLOSURE)} "' in conf
    for k in (K1, K2):
        argv = ["dracut", "--force", "--add-drivers", " ".join(VIRTIO_CLOSURE)]
        assert argv + [k.initramfs, k.version] in guest.ran
    assert (
        "initramfs: /boot/initrd.img-6.1.0-1 holds virtio_pci virtio_blk virtio_scsi "
        "virtio_net virtio_console and their dependencies virtio_pci_legacy_dev "
        "virtio_pci_modern_dev virtio virtio_ring scsi_mod scsi_common net_failover "
        "failover"
    ) in log
    # The guest's own configuration is left as it was.
    assert "omit_drivers" in guest.read("/etc/dracut.conf.d/10-hardware.conf")


def test_image_lacking_the_dependencies_of_a_driver_fails_the_conversion(tmp_path):
    # What dracut makes of omit_drivers+=" virtio virtio_ring ... " when only
    # the drivers are named: virtio_pci without what it needs to load.
    guest = guest_with_kernels(tmp_path)
    guest.put("/usr/bin/lsinitrd", "")
    held = lsinitrd(VIRTIO_CLOSURE, without=("virtio", "virtio_ring"))
    guest.commands = {"dracut": lambda argv: "", "lsinitrd": held}
    with pytest.raises(FixupError) as failed:
        initramfs.ensure_modules(guest, info("dracut"))
    assert str(failed.value) == (
        "/boot/initrd.img-6.1.0-1 lacks virtio, virtio_ring (needed by virtio_pci, "
        "virtio_blk, virtio_scsi, virtio_net, virtio_console)"
    )


def test_v2p_image_lacking_ahci_dependencies_fails(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.put("/usr/bin/lsinitramfs", "")
    everything = list(paths(K1))
    held = lsinitramfs(everything, without=("libahci", "libata", "crc32c_generic"))
    guest.commands = {"update-initramfs": lambda argv: "", "lsinitramfs": held}
    with pytest.raises(FixupError) as failed:
        initramfs.ensure_modules(guest, info("initramfs-tools"), AHCI)
    assert str(failed.value) == (
        "/boot/initrd.img-6.1.0-1 lacks libahci, libata (needed by ahci); "
        "crc32c_generic (needed by xfs)"
    )


def test_image_still_lacking_a_driver_is_an_error(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.put("/usr/bin/lsinitramfs", "")
    guest.commands = {
        "update-initramfs": lambda argv: "",
        "lsinitramfs": lsinitramfs(VIRTIO_CLOSURE, without=("virtio_blk",)),
    }
    with pytest.raises(FixupError, match=r"initrd.img-6.1.0-1 lacks virtio_blk$"):
        initramfs.ensure_modules(guest, info("initramfs-tools"))


def test_built_in_modules_need_not_be_in_the_image(tmp_path):
    dep = "".join(ln + "\n" for ln in DEP.splitlines() if "/virtio_pci.ko:" not in ln)
    builtin = BUILTIN + "kernel/drivers/virtio/virtio_pci.ko\n"
    guest = guest_with_kernels(tmp_path, dep=dep, builtin=builtin)
    guest.put("/usr/bin/lsinitramfs", "")
    loaded = [m for m in VIRTIO_CLOSURE if "virtio_pci" not in m]
    guest.commands = {
        "update-initramfs": lambda argv: "",
        "lsinitramfs": lsinitramfs(loaded),
    }
    events = EventStream()
    log = logged(events)
    initramfs.ensure_modules(guest, info("initramfs-tools"), events=events)
    assert any(line.endswith("; built into the kernel: virtio_pci") for line in log)


def test_listing_module_names_read_every_compression():
    text = (
        "usr/lib/modules/6.1.0-1/kernel/drivers/md/dm-mod.ko.zst\n"
        "-rw-r--r-- 1 root root 9 Jan 1 usr/lib/modules/x/kernel/lib/crc64.ko.xz\n"
        "usr/lib/modules/x/kernel/drivers/virtio/virtio.ko\n"
        "usr/lib/modules/x/kernel/lib/crc16.ko.gz\n"
        "usr/lib/modules/x/modules.dep\n"
    )
    assert initramfs.modules_in_image(text) == {"dm_mod", "crc64", "virtio", "crc16"}


def test_kernel_without_a_driver_is_found_before_any_change(tmp_path):
    dep = "".join(ln + "\n" for ln in DEP.splitlines() if "virtio_scsi" not in ln)
    guest = guest_with_kernels(tmp_path, dep=dep)
    gaps = initramfs.check(guest, info("initramfs-tools"))
    assert gaps == [
        "kernel 6.1.0-1: modules virtio_scsi",
        "kernel 6.1.0-2: modules virtio_scsi",
    ]
    assert guest.ran == []


def test_kernel_without_a_dependency_is_found_before_any_change(tmp_path):
    dep = "".join(ln + "\n" for ln in DEP.splitlines() if "virtio_ring.ko:" not in ln)
    guest = guest_with_kernels(tmp_path, dep=dep)
    gaps = initramfs.check(guest, info("initramfs-tools"), ("virtio_blk",))
    assert gaps[0] == "kernel 6.1.0-1: modules virtio_ring (needed by virtio_blk)"


def test_blacklists_of_needed_modules_are_undone_before_the_rebuild(tmp_path):
    guest = guest_with_kernels(tmp_path)
    guest.put("/usr/bin/lsinitramfs", "")
    guest.put("/etc/modprobe.d/no-virtio.conf", "blacklist virtio_ring\n")
    seen = []

    def rebuild(argv):
        seen.append(guest.read("/etc/modprobe.d/no-virtio.conf"))
        return ""

    guest.commands = {
        "update-initramfs": rebuild,
        "lsinitramfs": lsinitramfs(VIRTIO_CLOSURE),
    }
    events = EventStream()
    log = logged(events)
    initramfs.ensure_modules(guest, info("initramfs-tools"), events=events)
    assert seen[0].splitlines()[-1] == "#blacklist virtio_ring"
    assert (
        "initramfs: /etc/modprobe.d/no-virtio.conf:1: 'blacklist virtio_ring' "
        "no longer blocks virtio_ring"
    ) in log
