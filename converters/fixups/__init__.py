"""Guest-OS fixups: one set of operations (inspect, initramfs drivers,
device names, NIC names, bootloader) behind one interface (guest.GuestOS)
with two backends: guestfs_backend for images on the KVM side, and a chroot
backend for a real disk in the live environment (V2P, to come).

`pipeline.run(guest, request, events)` applies them in order after checking
that the guest can be converted at all."""
