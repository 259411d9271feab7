"""A guest line that keeps a needed driver from loading is made harmless,
and nothing else in the guest's configuration changes."""

from __future__ import annotations

from converters.fixups import blacklists
from tests.unit.fake_guest import FakeGuest

NEEDED = {"virtio_blk", "virtio_ring", "virtio", "ahci", "dm_mod"}
MARK = "# ferry: the line below kept {} from loading; it is needed to boot here"


def test_blacklist_and_install_lines_of_needed_modules_are_commented_out(tmp_path):
    guest = FakeGuest(tmp_path)
    original = (
        "# hardware profile\n"
        "blacklist pcspkr\n"
        "blacklist virtio_blk\n"
        "options ahci mobile_lpm_policy=1\n"
        "install virtio_ring /bin/false\n"
        "install dm-mod /bin/true\n"
        "install ahci /sbin/modprobe --ignore-install ahci && echo ahci up\n"
        "install virtio /usr/local/bin/log-it \\\n"
        "    virtio\n"
        "alias eth0 e1000\n"
    )
    guest.put("/etc/modprobe.d/site.conf", original)
    done = blacklists.unblock(guest, NEEDED)
    assert guest.read("/etc/modprobe.d/site.conf") == (
        "# hardware profile\n"
        "blacklist pcspkr\n"
        f"{MARK.format('virtio_blk')}\n"
        "#blacklist virtio_blk\n"
        "options ahci mobile_lpm_policy=1\n"
        f"{MARK.format('virtio_ring')}\n"
        "#install virtio_ring /bin/false\n"
        f"{MARK.format('dm_mod')}\n"
        "#install dm-mod /bin/true\n"
        "install ahci /sbin/modprobe --ignore-install ahci && echo ahci up\n"
        f"{MARK.format('virtio')}\n"
        "#install virtio /usr/local/bin/log-it \\\n"
        "#    virtio\n"
        "alias eth0 e1000\n"
    )
    assert [(c.line, c.module) for c in done] == [
        (3, "virtio_blk"),
        (5, "virtio_ring"),
        (6, "dm_mod"),
        (8, "virtio"),
    ]
    assert str(done[0]) == (
        "/etc/modprobe.d/site.conf:3: 'blacklist virtio_blk' "
        "no longer blocks virtio_blk"
    )


def test_files_without_needed_modules_are_not_rewritten(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put("/lib/modprobe.d/aliases.conf", "blacklist pcspkr\n# blacklist ahci\n")
    guest.put("/usr/lib/modprobe.d/fbdev-blacklist.conf", "blacklist nouveau")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.conf")}
    assert blacklists.unblock(guest, NEEDED) == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.conf")} == before


def test_every_modprobe_directory_is_read(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put("/lib/modprobe.d/a.conf", "blacklist ahci\n")
    guest.put("/usr/lib/modprobe.d/b.conf", "blacklist virtio\n")
    guest.put("/etc/modprobe.d/c.txt", "blacklist virtio_blk\n")  # not read by kmod
    done = blacklists.unblock(guest, NEEDED)
    assert [(c.path, c.module) for c in done] == [
        ("/lib/modprobe.d/a.conf", "ahci"),
        ("/usr/lib/modprobe.d/b.conf", "virtio"),
    ]
    assert guest.read("/etc/modprobe.d/c.txt") == "blacklist virtio_blk\n"


def test_kernel_command_line_loses_only_the_needed_modules(tmp_path):
    guest = FakeGuest(tmp_path)
    guest.put(
        "/etc/default/grub",
        "GRUB_DEFAULT=0\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet rd.driver.blacklist=virtio_blk,nouveau"\n'
        'GRUB_CMDLINE_LINUX="console=ttyS0 modprobe.blacklist=virtio-ring"\n'
        "GRUB_CMDLINE_LINUX_RECOVERY='module_blacklist=pcspkr'\n",
    )
    guest.put(
        "/etc/default/grub.d/50-site.cfg",
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX module_blacklist=ahci,dm_mod"\n',
    )
    done = blacklists.unblock(guest, NEEDED)
    assert guest.read("/etc/default/grub") == (
        "GRUB_DEFAULT=0\n"
        "# ferry: took virtio_blk out of a blacklist below: needed to boot here\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet rd.driver.blacklist=nouveau"\n'
        "# ferry: took virtio_ring out of a blacklist below: needed to boot here\n"
        'GRUB_CMDLINE_LINUX="console=ttyS0 "\n'
        "GRUB_CMDLINE_LINUX_RECOVERY='module_blacklist=pcspkr'\n"
    )
    assert guest.read("/etc/default/grub.d/50-site.cfg") == (
        "# ferry: took ahci, dm_mod out of a blacklist below: needed to boot here\n"
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX "\n'
    )
    assert [(c.path, c.line, c.module) for c in done] == [
        ("/etc/default/grub", 2, "virtio_blk"),
        ("/etc/default/grub", 3, "virtio_ring"),
        ("/etc/default/grub.d/50-site.cfg", 1, "ahci"),
        ("/etc/default/grub.d/50-site.cfg", 1, "dm_mod"),
    ]


def test_install_commands_that_still_load_the_module_stay():
    for command in (
        "install virtio_blk /sbin/modprobe --ignore-install virtio_blk",
        "install virtio_blk { /sbin/modprobe -i $MODPROBE_MODULE; true; }",
        "install virtio_blk insmod /lib/modules/x/virtio_blk.ko.xz",
    ):
        assert blacklists.blocked(command, NEEDED) == "", command
    assert blacklists.blocked("install virtio_blk /bin/echo virtio_blk", NEEDED)
