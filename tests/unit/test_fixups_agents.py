"""Other hypervisors' agents are masked, Xen's hvc0 console moves to ttyS0,
and a guest without them is left alone."""

from __future__ import annotations

import os

from converters.fixups import agents
from tests.unit.fake_guest import FakeGuest


def guest_with(tmp_path, *units) -> FakeGuest:
    guest = FakeGuest(tmp_path)

    def ln(argv):
        target = guest._p(argv[-1])
        target.unlink(missing_ok=True)
        os.symlink(argv[-2], target)
        return ""

    guest.commands = {"ln": ln}
    guest.mkdir_p("/etc/systemd/system")
    for unit in units:
        guest.put(f"/usr/lib/systemd/system/{unit}", "[Service]\n")
    return guest


def test_vmware_and_virtualbox_services_are_masked(tmp_path):
    guest = guest_with(
        tmp_path, "open-vm-tools.service", "vboxadd.service", "ssh.service"
    )
    done = agents.disable(guest)
    assert done == [
        "VMware tools: masked open-vm-tools.service",
        "VirtualBox additions: masked vboxadd.service",
    ]
    link = tmp_path / "etc/systemd/system/open-vm-tools.service"
    assert os.readlink(link) == "/dev/null"
    assert not (tmp_path / "etc/systemd/system/ssh.service").exists()


def test_xen_console_moves_to_serial(tmp_path):
    guest = guest_with(tmp_path)
    guest.put("/etc/default/grub", 'GRUB_CMDLINE_LINUX="console=hvc0 xencons=tty"\n')
    assert agents.disable(guest) == ["/etc/default/grub: console hvc0 -> ttyS0"]
    assert "console=ttyS0 xencons" in guest.read("/etc/default/grub")


def test_a_guest_without_agents_is_left_alone(tmp_path):
    guest = guest_with(tmp_path, "ssh.service")
    assert agents.disable(guest) == []
    assert guest.ran == []
