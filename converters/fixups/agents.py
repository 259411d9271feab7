"""Leftovers of other hypervisors, disabled: their agents fail or spin on
KVM (VMware tools look for the VMware backdoor, VirtualBox's service for
its device, Xen's for xenstore) and Xen guests put their console on hvc0,
which KVM's serial console is not.

Services are masked (a link to /dev/null, what `systemctl mask` makes)
rather than packages purged: that needs no package manager or network in
the appliance, and is undone with `systemctl unmask`.
"""

from __future__ import annotations

import re

from converters.fixups.guest import GuestOS

UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
AGENTS = {
    "VMware tools": (
        "open-vm-tools.service",
        "vmtoolsd.service",
        "vgauth.service",
        "vmware-tools.service",
    ),
    "VirtualBox additions": (
        "vboxadd.service",
        "vboxadd-service.service",
        "virtualbox-guest-utils.service",
    ),
    "Xen guest utilities": ("xe-linux-distribution.service", "xendomains.service"),
    "Hyper-V daemons": (
        "hv-kvp-daemon.service",
        "hv-vss-daemon.service",
        "hv-fcopy-daemon.service",
        "hyperv-daemons.service",
    ),
}
_HVC = re.compile(r"(?<![\w.-])console=hvc0\b")


def installed_units(guest: GuestOS) -> dict[str, list[str]]:
    """Agent -> its service units the guest's packages installed."""
    found: dict[str, list[str]] = {}
    for agent, units in AGENTS.items():
        for unit in units:
            if any(guest.is_file(f"{d}/{unit}") for d in UNIT_DIRS[1:]):
                found.setdefault(agent, []).append(unit)
    return found


def disable(guest: GuestOS) -> list[str]:
    """Mask every agent unit found and move Xen's hvc0 console to ttyS0;
    returns what was done, for the log."""
    done = []
    for agent, units in installed_units(guest).items():
        for unit in units:
            # idempotent: a re-run masks again
            guest.run_command(
                ["ln", "-sfn", "/dev/null", f"/etc/systemd/system/{unit}"]
            )
        done.append(f"{agent}: masked {', '.join(units)}")
    for path in ["/etc/default/grub"] + guest.glob("/etc/default/grub.d/*.cfg"):
        if guest.is_file(path):
            text = guest.read(path)
            if _HVC.search(text):
                guest.write(path, _HVC.sub("console=ttyS0", text))
                done.append(f"{path}: console hvc0 -> ttyS0")
    return done
