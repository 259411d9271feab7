"""The test-machine harness: Debian trees, machine recipes built with guestfs,
QEMU hardware profiles and a runner that waits for boot markers."""
