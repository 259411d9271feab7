"""The live environment's build: diskimage-builder elements (``elements/``)
make a cached Debian chroot; the driver (``python -m image.build``, called by
``make image``) installs ferry into it and packs it into one initramfs, a
hybrid ISO and a PXE bundle. See docs/image.md."""
