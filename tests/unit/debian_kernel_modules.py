"""Lines of Debian 12's 6.1 kernel's depmod files (linux-image-6.1.0-*-amd64,
/lib/modules/VERSION), verbatim: the unit tests of the module closure run on
the real format, paths, dashes and all."""

# ruff: noqa: E501 - depmod's lines are kept whole, as the kernel ships them

DEP = """\
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/arch/x86/crypto/crct10dif-pclmul.ko: kernel/crypto/crct10dif_common.ko
kernel/fs/mbcache.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/crypto/crc32c_generic.ko:
kernel/crypto/crct10dif_common.ko:
kernel/crypto/crct10dif_generic.ko: kernel/crypto/crct10dif_common.ko
kernel/block/t10-pi.ko: kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/lib/crc16.ko:
kernel/lib/crc-t10dif.ko: kernel/crypto/crct10dif_common.ko
kernel/lib/crc64.ko:
kernel/lib/libcrc32c.ko:
kernel/lib/crc64-rocksoft.ko: kernel/lib/crc64.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/sd_mod.ko: kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/drivers/net/phy/mdio_devres.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/libphy.ko:
kernel/drivers/net/phy/realtek.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/net/ethernet/realtek/r8169.ko: kernel/drivers/net/phy/mdio_devres.ko kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ata_piix.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/ata_generic.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/net/core/failover.ko:
"""

SOFTDEP = """\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep cifs gcm
softdep crc_t10dif pre: crct10dif
softdep libcrc32c pre: crc32c
softdep crc64_rocksoft pre: crc64
softdep ipmi_msghandler post: ipmi_devintf
softdep r8169 pre: realtek
"""

BUILTIN = """\
kernel/fs/binfmt_elf.ko
kernel/fs/compat_binfmt_elf.ko
kernel/lib/crc-ccitt.ko
kernel/lib/crc32.ko
kernel/drivers/tty/serial/8250/8250_pci.ko
"""

ALIAS = """\
alias crypto-crc32c-intel crc32c_intel
alias crc32c-intel crc32c_intel
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crct10dif-pclmul crct10dif_pclmul
alias crct10dif-pclmul crct10dif_pclmul
alias crypto-crct10dif crct10dif_pclmul
alias crct10dif crct10dif_pclmul
alias crypto-crc32c-generic crc32c_generic
alias crc32c-generic crc32c_generic
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias crypto-crct10dif-generic crct10dif_generic
alias crct10dif-generic crct10dif_generic
alias crypto-crct10dif crct10dif_generic
alias crct10dif crct10dif_generic
alias crypto-crc64-rocksoft-generic crc64_rocksoft_generic
alias crc64-rocksoft-generic crc64_rocksoft_generic
alias crypto-crc64-rocksoft crc64_rocksoft_generic
alias crc64-rocksoft crc64_rocksoft_generic
alias virtio:d00000002v* virtio_blk
"""
