"""Interface names that survive the move: each NIC's name is pinned to its
MAC with a systemd .link file, and the VM's NICs carry the same MACs, so
the guest's network configuration (networkd, ifupdown, NetworkManager,
netplan: all of which name the interface) finds its interface again.

Without a pin, a NIC moved from PCI slot 8 (ens8) to slot 3 comes up as
ens3 and a configuration for ens8 matches nothing: virt-v2v's most reported
problem. The names come from the capture's inventory (with the real MACs);
for a bare disk they come from the guest's own configuration and get new,
stable MACs that the domain then uses.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from converters.fixups.guest import GuestOS

LINK_DIR = "/etc/systemd/network"
# Sorts before 99-default.link: udev applies the first .link file that
# matches a device, so this one decides the name.
LINK_PREFIX = "10-ferry-"
LINK = """# Written by ferry convert: keep the name this NIC had on the source
# machine. The VM's NIC carries the same MAC, so the network configuration
# that names {name} still finds it.
[Match]
MACAddress={mac}

[Link]
Name={name}
"""
_VIRTUAL = re.compile(r"^(lo|br|bond|team|vlan|veth|virbr|docker|tun|tap|wg|dummy)")


@dataclass(frozen=True)
class NicPin:
    name: str
    mac: str
    source: str  # "inventory" or the guest file the name was read from


def link_path(name: str) -> str:
    return f"{LINK_DIR}/{LINK_PREFIX}{name}.link"


def link_text(pin: NicPin) -> str:
    return LINK.format(name=pin.name, mac=pin.mac.lower())


def generated_mac(hostname: str, name: str) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range: the same
    guest converted twice gets the same MACs (DHCP leases stay)."""
    digest = hashlib.sha256(f"{hostname}/{name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _keep(name: str) -> bool:
    return (
        bool(name) and not re.search(r"[*?\[\].:]", name) and not _VIRTUAL.match(name)
    )


def _from_networkd(text: str) -> list[str]:
    names, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Match]" and line.startswith("Name="):
            names += line.split("=", 1)[1].split()
    return names


def _from_ifupdown(text: str) -> list[str]:
    names = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("iface", "auto", "allow-hotplug") and len(words) > 1:
            names += words[1:2] if words[0] == "iface" else words[1:]
    return names


def _from_keyfile(text: str, key: str) -> list[str]:
    found = re.findall(rf"^\s*{key}\s*=\s*[\"']?([^\"'\s]+)", text, re.M)
    return found


def _from_netplan(text: str) -> list[str]:
    """Keys of the `ethernets:` mapping (no YAML parser needed for that)."""
    names: list[str] = []
    parent = child = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        depth = len(line) - len(line.lstrip())
        if stripped == "ethernets:":
            parent, child = depth, None
        elif parent is not None and depth <= parent:
            parent = None
        elif parent is not None and stripped.endswith(":"):
            child = depth if child is None else child
            if depth == child:
                names.append(stripped[:-1].strip("\"'"))
    return names


SOURCES = (
    ("/etc/systemd/network/*.network", _from_networkd),
    ("/etc/network/interfaces", _from_ifupdown),
    ("/etc/network/interfaces.d/*", _from_ifupdown),
    (
        "/etc/NetworkManager/system-connections/*",
        lambda t: _from_keyfile(t, "interface-name"),
    ),
    ("/etc/sysconfig/network-scripts/ifcfg-*", lambda t: _from_keyfile(t, "DEVICE")),
    ("/etc/netplan/*.yaml", _from_netplan),
)


def configured_names(guest: GuestOS) -> list[tuple[str, str]]:
    """(interface name, file) for each physical interface the guest's
    network configuration names exactly (patterns like en* need no pin)."""
    found: dict[str, str] = {}
    for pattern, parse in SOURCES:
        for path in guest.glob(pattern):
            if guest.is_file(path):
                for name in parse(guest.read(path)):
                    if _keep(name):
                        found.setdefault(name, path)
    return list(found.items())


def pins(guest: GuestOS, inventory_nics, hostname: str) -> list[NicPin]:
    """What to pin: the inventory's NICs (name, MAC) when the capture has
    them, else the configured names with generated MACs."""
    if inventory_nics:
        return [NicPin(n.name, n.mac.lower(), "inventory") for n in inventory_nics]
    return [
        NicPin(name, generated_mac(hostname, name), path)
        for name, path in configured_names(guest)
    ]


def check(guest: GuestOS) -> list[str]:
    for d in ("/usr/lib/systemd/network", "/lib/systemd/network"):
        if guest.is_dir(d):
            return []
    return [
        "systemd-udevd .link support (no /usr/lib/systemd/network) to pin NIC names"
    ]


def apply(guest: GuestOS, wanted: list[NicPin]) -> None:
    guest.mkdir_p(LINK_DIR)
    # A re-run (or a second conversion) replaces earlier pins, never adds
    # a second name for a MAC.
    for old in guest.glob(f"{LINK_DIR}/{LINK_PREFIX}*.link"):
        guest.remove(old)
    for pin in wanted:
        guest.write(link_path(pin.name), link_text(pin))
