"""The modules a driver needs, read from the kernel's own depmod files
(lines of Debian 12's 6.1 kernel): what the initramfs must hold besides the
drivers named."""

from __future__ import annotations

import pytest

from converters.fixups import module_deps
from converters.fixups.initramfs import VIRTIO_MODULES
from converters.fixups.module_deps import KernelModules, closure
from tests.unit.debian_kernel_modules import ALIAS, BUILTIN, DEP, SOFTDEP


def kernel(dep=DEP, softdep=SOFTDEP, builtin=BUILTIN, alias=ALIAS) -> KernelModules:
    return KernelModules(
        deps=module_deps.parse_dep(dep),
        softdeps=module_deps.parse_softdep(softdep),
        builtin=module_deps.parse_builtin(builtin),
        aliases=lambda: module_deps.parse_alias(alias),
    )


def no_aliases():
    raise AssertionError("modules.alias read though no soft dependency needs it")


@pytest.mark.parametrize(
    "text, name",
    [
        ("kernel/drivers/md/dm-mod.ko", "dm_mod"),
        ("kernel/drivers/md/dm-mod.ko.xz", "dm_mod"),
        ("kernel/arch/x86/crypto/crc32c-intel.ko.zst:", "crc32c_intel"),
        ("kernel/lib/crc-t10dif.ko.gz", "crc_t10dif"),
        ("virtio-blk", "virtio_blk"),
        ("virtio_ring", "virtio_ring"),
    ],
)
def test_module_names_are_normalised_the_way_kmod_does(text, name):
    assert module_deps.module_name(text) == name


def test_virtio_drivers_need_virtio_and_virtio_ring():
    virtio = kernel()
    virtio.aliases = no_aliases  # no soft dependency among them
    found = closure(virtio, VIRTIO_MODULES)
    assert found.wanted == VIRTIO_MODULES
    assert set(found.needs) == {
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio",
        "virtio_ring",
        "scsi_mod",
        "scsi_common",
        "net_failover",
        "failover",
    }
    assert found.needed_by["virtio_ring"] == VIRTIO_MODULES
    assert found.needed_by["virtio_pci_modern_dev"] == ("virtio_pci",)
    assert found.needed_by["failover"] == ("virtio_net",)
    assert found.loadable == found.wanted + found.needs
    assert found.absent == ()


def test_a_driver_without_dependencies_needs_nothing():
    found = closure(
        KernelModules(module_deps.parse_dep(DEP), aliases=no_aliases), ["e1000"]
    )
    assert (found.wanted, found.needs) == (("e1000",), ())


def test_soft_dependency_through_an_alias_needs_every_module_it_names():
    # softdep ext4 pre: crypto-crc32c; modprobe and dracut-install load both
    # crc32c_intel and crc32c_generic for it.
    found = closure(kernel(), ["ext4"])
    assert found.needs == ("crc16", "mbcache", "jbd2", "crc32c_intel", "crc32c_generic")


def test_soft_dependency_of_a_dependency_counts_too():
    # xfs -> libcrc32c (modules.dep), softdep libcrc32c pre: crc32c (alias).
    found = closure(kernel(), ["xfs"])
    assert found.needs == ("libcrc32c", "crc32c_intel", "crc32c_generic")
    assert found.needed_by["crc32c_generic"] == ("xfs",)


def test_soft_dependency_by_module_name():
    found = closure(kernel(alias=""), ["r8169"])
    assert found.needs == ("mdio_devres", "libphy", "realtek")


def test_soft_dependency_the_kernel_does_not_ship_is_not_needed():
    # Without modules.alias, crypto-crc32c names nothing this kernel ships.
    assert closure(kernel(alias=""), ["ext4"]).needs == ("crc16", "mbcache", "jbd2")


def test_only_pre_soft_dependencies_are_read():
    soft = module_deps.parse_softdep(SOFTDEP)
    assert "cifs" not in soft  # `softdep cifs gcm`: no mode, kmod ignores it
    assert "ipmi_msghandler" not in soft  # post: loads after the driver
    assert soft["ext4"] == ("crypto_crc32c",)


def test_built_in_modules_need_nothing_in_the_image():
    builtin = BUILTIN + "kernel/drivers/virtio/virtio_pci.ko\n"
    dep = "".join(ln + "\n" for ln in DEP.splitlines() if "/virtio_pci.ko:" not in ln)
    found = closure(kernel(dep=dep, builtin=builtin), ["virtio_pci", "virtio_blk"])
    assert found.wanted == ("virtio_pci", "virtio_blk")
    assert found.builtin == {"virtio_pci"}
    assert found.loadable == ("virtio_blk", "virtio", "virtio_ring")
    assert found.absent == ()


def test_soft_dependency_on_a_built_in_is_met():
    found = closure(kernel(softdep="softdep e1000 pre: crc32\n"), ["e1000"])
    assert found.needs == ()


def test_modules_the_kernel_lacks_are_named_with_what_needs_them():
    dep = "".join(ln + "\n" for ln in DEP.splitlines() if "virtio_ring.ko:" not in ln)
    found = closure(kernel(dep=dep), ["virtio_blk", "virtio_gpu"])
    assert found.absent == ("virtio_gpu", "virtio_ring")
    assert found.why("virtio_ring") == "virtio_ring (needed by virtio_blk)"
    assert "virtio_ring" not in found.loadable
