"""NIC names pinned to MACs: from the inventory, or from the names the
guest's own network configuration uses."""

from __future__ import annotations

from converters.fixups import nic_names
from converters.inventory import Nic
from tests.unit.fake_guest import FakeGuest


def test_inventory_nics_are_pinned_by_mac(tmp_path):
    guest = FakeGuest(tmp_path)
    pins = nic_names.pins(guest, (Nic("ens8", "52:54:00:FE:01:01", True),), "h")
    nic_names.apply(guest, pins)
    text = guest.read("/etc/systemd/network/10-ferry-ens8.link")
    assert "[Match]\nMACAddress=52:54:00:fe:01:01\n" in text
    assert "[Link]\nName=ens8\n" in text


def test_rerun_replaces_earlier_pins(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put("/etc/systemd/network/10-ferry-eth9.link", "old")
    guest.put("/etc/systemd/network/20-wired.network", "[Match]\nName=ens8\n")
    nic_names.apply(guest, [nic_names.NicPin("ens8", "52:54:00:00:00:01", "x")])
    assert guest.glob("/etc/systemd/network/*") == [
        "/etc/systemd/network/10-ferry-ens8.link",
        "/etc/systemd/network/20-wired.network",
    ]


def test_names_come_from_every_kind_of_network_configuration(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put(
        "/etc/systemd/network/20-wired.network",
        "[Match]\nName=ens8\n[Network]\nDHCP=yes\n",
    )
    guest.put("/etc/systemd/network/30-any.network", "[Match]\nName=en*\n")
    guest.put(
        "/etc/network/interfaces",
        "auto lo\niface lo inet loopback\nallow-hotplug eno1\niface eno1 inet dhcp\n"
        "iface br0 inet static\n",
    )
    guest.put(
        "/etc/NetworkManager/system-connections/Wired.nmconnection",
        "[connection]\nid=Wired\ninterface-name=enp3s0\n",
    )
    guest.put(
        "/etc/netplan/01.yaml",
        "network:\n  version: 2\n  ethernets:\n    enp0s31f6:\n      dhcp4: true\n"
        "    eno2:\n      addresses: [10.0.0.2/24]\n"
        "  bridges:\n    br1:\n      interfaces: []\n",
    )
    guest.put(
        "/etc/sysconfig/network-scripts/ifcfg-em1", 'DEVICE="em1"\nBOOTPROTO=dhcp\n'
    )
    names = [n for n, _ in nic_names.configured_names(guest)]
    assert sorted(names) == ["em1", "eno1", "eno2", "enp0s31f6", "enp3s0", "ens8"]


def test_without_inventory_configured_names_get_stable_macs(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put("/etc/network/interfaces", "auto ens8\niface ens8 inet dhcp\n")
    first = nic_names.pins(guest, (), "web1")
    again = nic_names.pins(guest, (), "web1")
    assert first == again
    assert first[0].name == "ens8" and first[0].mac.startswith("52:54:00:")
    assert nic_names.pins(guest, (), "web2")[0].mac != first[0].mac


def test_check_needs_udev_link_support(tmp_path):
    guest = FakeGuest(tmp_path)
    assert nic_names.check(guest)
    guest.mkdir_p("/usr/lib/systemd/network")
    assert nic_names.check(guest) == []
