"""Debian 12's own dracut (059), run in a chroot of the test machines'
dracut tree with phys-uefi-lvm's configuration (an exclusive `drivers=`
and `omit_drivers+=" virtio ... virtio_ring "`), against the initramfs
step: naming only the virtio drivers leaves out the modules they need and
the check says so (the negative control); ferry's step puts them all in,
and the guest's own later rebuild keeps them.

No QEMU: the chroot backend runs the guest's dracut natively, about 45 s
a run on a loaded 2-core host.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from converters.events import EventStream, Log
from converters.fixups import chroot_backend, initramfs
from converters.fixups.guest import FixupError, Mount
from converters.fixups.inspect import GuestInfo, Kernel
from tests.harness import debian_tree
from tests.harness.machines import OMIT_DRIVERS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HARDWARE_CONF = (
    'hostonly="no"\n'
    'drivers="ahci sd_mod ext4 dm_mod"\n'
    f'omit_drivers+=" {" ".join(OMIT_DRIVERS["phys-uefi-lvm"])} "\n'
)
SITE_BLACKLIST = (
    "blacklist virtio_blk\ninstall virtio_ring /bin/false\nblacklist pcspkr\n"
)


class Tree:
    """The dracut tree unpacked, as a guest of the chroot backend."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        subprocess.run(
            ["tar", "-C", str(root), "-xf", str(debian_tree.tree_tar("dracut"))],
            check=True,
        )
        (root / "etc/dracut.conf.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/dracut.conf.d/10-hardware.conf").write_text(HARDWARE_CONF)
        self.root = root
        self.guest = chroot_backend.Guest(root, [Mount("tree", "/")], [])
        (version,) = [p.name for p in (root / "lib/modules").iterdir()]
        self.kernel = Kernel(
            version,
            f"/boot/vmlinuz-{version}",
            f"/boot/initrd.img-{version}",
            f"/lib/modules/{version}",
        )
        self.info = GuestInfo(
            "debian", "debian", "12", "Debian 12", "phys-uefi-lvm",
            (self.kernel,), "dracut", None, "uefi", "/dev/ferry/root",
        )  # fmt: skip

    def image_files(self) -> list[str]:
        out = self.guest.run_command(["lsinitrd", self.kernel.initramfs], quiet=True)
        return [line.split()[-1] for line in out.splitlines() if line.strip()]

    def image_file(self, path: str) -> str:
        argv = ["lsinitrd", "-f", path, self.kernel.initramfs]
        return self.guest.run_command(argv, quiet=True)


@contextmanager
def _tree(root: Path) -> Iterator[Tree]:
    tree = Tree(root)
    try:
        with debian_tree.chroot_mounts(root):
            yield tree
    finally:
        # Never remove through a bind of the host's /dev that failed to go.
        mounts = Path("/proc/self/mounts").read_text().split()
        if not any(m.startswith(f"{root}/") for m in mounts):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_tree(tmp_path):
    with _tree(tmp_path / "root") as tree:
        yield tree


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tree after ferry's initramfs step, with what it logged."""
    with _tree(tmp_path_factory.mktemp("dracut") / "root") as tree:
        (tree.root / "usr/lib/modprobe.d/site.conf").write_text(SITE_BLACKLIST)
        events, log = EventStream(), []
        events.subscribe(lambda e: log.append(e.message) if isinstance(e, Log) else 0)
        initramfs.ensure_modules(tree.guest, tree.info, events=events)
        yield tree, log


def module_files(files: list[str]) -> set[str]:
    """`virtio_ring.ko` for .../virtio_ring.ko[.xz|.zst]: what the image has."""
    return {f.rsplit("/", 1)[1].split(".ko")[0] + ".ko" for f in files if ".ko" in f}


def test_naming_only_the_drivers_leaves_their_dependencies_out_and_fails_the_check(
    fresh_tree,
):
    tree = fresh_tree
    # What ferry wrote before it followed dependencies.
    tree.guest.write(
        "/etc/dracut.conf.d/90-ferry-drivers.conf",
        f'add_drivers+=" {" ".join(initramfs.VIRTIO_MODULES)} "\n',
    )
    tree.guest.run_command(
        ["dracut", "--force", tree.kernel.initramfs, tree.kernel.version]
    )
    files = module_files(tree.image_files())
    assert "virtio_pci.ko" in files and "virtio_blk.ko" in files
    assert "virtio_ring.ko" not in files and "virtio.ko" not in files
    needed = initramfs.closure(tree.guest, tree.kernel, initramfs.VIRTIO_MODULES)
    with pytest.raises(FixupError) as failed:
        initramfs.verify(tree.guest, tree.info, tree.kernel, needed)
    message = str(failed.value)
    assert message.startswith(f"{tree.kernel.initramfs} lacks ")
    assert "virtio_ring" in message and "needed by virtio_pci" in message


def test_ferry_puts_virtio_and_its_dependencies_into_an_image_that_omits_them(
    converted,
):
    tree, log = converted
    files = module_files(tree.image_files())
    for module in ("virtio_pci", "virtio_blk", "virtio_net", "virtio", "virtio_ring"):
        assert f"{module}.ko" in files
    held = [line for line in log if " holds " in line]
    assert held and "their dependencies" in held[0] and "virtio_ring" in held[0]
    # The guest's omit_drivers and drivers= are as they were.
    assert tree.guest.read("/etc/dracut.conf.d/10-hardware.conf") == HARDWARE_CONF


def test_blacklists_of_the_drivers_are_commented_out_in_the_image_too(converted):
    tree, log = converted
    lines = tree.image_file("usr/lib/modprobe.d/site.conf").splitlines()
    assert "#blacklist virtio_blk" in lines
    assert "#install virtio_ring /bin/false" in lines
    assert "blacklist pcspkr" in lines
    assert not any(
        ln.startswith(("blacklist virtio", "install virtio")) for ln in lines
    )
    assert any("'blacklist virtio_blk' no longer blocks virtio_blk" in m for m in log)


def test_the_guests_own_later_rebuild_keeps_the_dependencies(converted):
    tree, _ = converted
    # As the kernel's postinst hook runs it: no ferry command line.
    tree.guest.run_command(
        ["dracut", "--force", tree.kernel.initramfs, tree.kernel.version]
    )
    files = module_files(tree.image_files())
    assert {"virtio_pci.ko", "virtio.ko", "virtio_ring.ko"} <= files


def test_a_deploy_gets_ahci_and_libata_into_an_image_whose_dracut_omits_them(
    fresh_tree,
):
    # vm-virtio-dracut's configuration, deployed onto an AHCI machine with
    # an e1000: the modules deploy_fixups finds there, plus the root's ext4.
    tree = fresh_tree
    omit = " ".join(OMIT_DRIVERS["vm-virtio-dracut"])
    conf = (
        'hostonly="no"\ndrivers="virtio_pci virtio_blk ext4"\n'
        f'omit_drivers+=" {omit} "\n'
    )
    tree.guest.write("/etc/dracut.conf.d/10-hardware.conf", conf)
    initramfs.ensure_modules(tree.guest, tree.info, ("sd_mod", "ahci", "e1000", "ext4"))
    files = module_files(tree.image_files())
    for module in ("ahci", "libahci", "libata", "sd_mod", "scsi_mod", "e1000"):
        assert f"{module}.ko" in files
