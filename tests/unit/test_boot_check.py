"""The boot check's parts that need no boot: the VM it starts (the domain's
machine on throwaway overlays, a copy of the UEFI variables, no network,
the console in a file), the grub.cfg it gives a serial console, the spec of
a session checked as it is, and its result file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from converters import accel, boot_check, boot_check_spec, boot_console
from converters.domain.firmware import find_ovmf
from converters.domain.spec import DiskSpec, DomainSpec, NicSpec
from converters.inventory import Disk, Machine, Nic

TCG = accel.Accelerator("tcg", "test")
MAC = "52:54:00:fe:01:01"


def qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True)
    return path


@pytest.fixture
def uefi_domain(tmp_path) -> DomainSpec:
    ovmf = find_ovmf()
    if ovmf is None:
        pytest.skip("no OVMF installed")
    nvram = tmp_path / "web01_VARS.fd"
    nvram.write_bytes(b"the domain's own variables")
    disks = tuple(DiskSpec(qcow2(tmp_path / f"sd{c}.qcow2")) for c in "ab")
    return DomainSpec(
        "web01", 2, 1024, "uefi", disks, (NicSpec(MAC, "ens8"),),
        kvm=False, ovmf=ovmf, nvram=nvram,
    )  # fmt: skip


def test_the_vm_is_the_domains_machine_on_overlays_with_no_network(
    uefi_domain, tmp_path
):
    work = tmp_path / "work"
    work.mkdir()
    overlays = boot_check.make_overlays(uefi_domain, work)
    vm = boot_check.vm_spec(uefi_domain, overlays, work)
    console = tmp_path / "boot-check.log"
    argv = boot_check.vm_command(vm, TCG, console)
    text = " ".join(argv)
    # the overlays, never the domain's disks
    for i, disk in enumerate(uefi_domain.disks):
        assert f"file={work / f'disk{i}.qcow2'},format=qcow2" in text
        assert str(disk.path) not in text
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", overlays[i]],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        assert info["backing-filename"] == str(disk.path)
    # a copy of the domain's variables; the domain's own file is not used
    assert f"unit=1,file={work / 'VARS.fd'}" in text
    assert str(uefi_domain.nvram) not in text
    assert (work / "VARS.fd").read_bytes() == b"the domain's own variables"
    assert f"readonly=on,file={uefi_domain.ovmf.code}" in text
    # the NIC with its MAC, on a netdev that reaches nothing
    assert f"virtio-net-pci,netdev=net0,mac={MAC}" in text
    assert "user,restrict=on,id=net0" in text
    # serial console into the log, no display, firmware on serial, no reboot
    assert argv[argv.index("-serial") + 1] == f"file:{console}"
    assert argv[argv.index("-display") + 1] == "none"
    assert argv[argv.index("-machine") + 1] == "q35,graphics=off"
    assert argv[-1] == "-no-reboot"
    assert argv[argv.index("-accel") + 1] == "tcg"
    # the same machine as the domain: memory, vCPUs
    assert argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-smp") + 1] == "2"


def test_a_domain_without_its_vars_file_yet_gets_the_empty_template(
    uefi_domain, tmp_path
):
    uefi_domain.nvram.unlink()
    work = tmp_path / "work"
    work.mkdir()
    vm = boot_check.vm_spec(uefi_domain, [Path("a"), Path("b")], work)
    template = uefi_domain.ovmf.vars_template.read_bytes()
    assert vm.nvram.read_bytes() == template
    assert not uefi_domain.nvram.exists()


GRUB_CFG = """\
insmod gzio
if loadfont $font ; then
  set gfxmode=auto
  terminal_output gfxterm
fi
menuentry 'Debian GNU/Linux' --class debian {
\tlinux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID=1234 ro  quiet
\tinitrd\t/boot/initrd.img-6.1.0-50-amd64
}
submenu 'Advanced options for Debian GNU/Linux' {
\tmenuentry 'Debian, with Linux 6.1.0-50-amd64' {
\t\tlinux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID=1234 ro console=ttyS0,9600 splash
\t}
}
"""


def test_grub_and_every_kernel_talk_on_ttys0():
    out = boot_console.serial_grub_cfg(GRUB_CFG)
    lines = out.splitlines()
    # the serial terminal after the header's gfxterm, before the first entry
    terminal = lines.index("terminal_output console serial")
    assert lines.index("  terminal_output gfxterm") < terminal
    assert terminal < next(i for i, ln in enumerate(lines) if "menuentry" in ln)
    assert "serial --unit=0 --speed=115200" in lines
    kernels = [ln for ln in lines if ln.strip().startswith("linux")]
    assert kernels[0].endswith(
        "root=UUID=1234 ro console=tty0 console=ttyS0,115200n8"
    ), kernels[0]
    # a kernel that already talks on ttyS0 keeps its own setting
    assert kernels[1].endswith("ro console=ttyS0,9600"), kernels[1]
    assert "quiet" not in out and "splash" not in out
    # Debian's ESP stub has no entries: the terminal goes first
    stub = "search.fs_uuid 1234 root\nconfigfile $prefix/grub.cfg\n"
    assert boot_console.serial_grub_cfg(stub).startswith("# added by ferry")


def test_the_userspace_marker_unit_runs_once_local_filesystems_are_mounted():
    unit = boot_console.UNIT
    assert "Requires=local-fs.target" in unit and "After=local-fs.target" in unit
    assert "WantedBy=sysinit.target" in unit
    assert "FERRY-BOOT-CHECK userspace" in unit and "/dev/ttyS0" in unit


def test_a_session_checked_as_it_is_gets_the_spec_convert_would_write(tmp_path):
    from converters import convert

    qcow2(tmp_path / "sda.qcow2")
    raw = tmp_path / "sdb.qcow2"
    subprocess.run(["truncate", "-s", "16M", raw], check=True)  # raw inside
    inventory = Machine(
        "bios", 4, 2 << 30,
        disks=(Disk("sda", "/dev/sda", 64 << 20), Disk("sdb", "/dev/sdb", 16 << 20)),
        nics=(Nic("ens8", MAC.upper(), True, "e1000"),),
        hostname="db01",
    )  # fmt: skip
    (tmp_path / "inventory.json").write_text(json.dumps(inventory.to_json()))
    source = convert.load_source([tmp_path])
    spec = boot_check_spec.as_is(source)
    assert (spec.name, spec.firmware, spec.vcpus, spec.memory_mib) == (
        "db01", "bios", 4, 2048,
    )  # fmt: skip
    assert [(d.path.name, d.format) for d in spec.disks] == [
        ("sda.qcow2", "qcow2"),
        ("sdb.qcow2", "raw"),
    ]
    assert [n.mac for n in spec.nics] == [MAC]
    # a converted session: its conversion record says firmware and pins
    (tmp_path / "conversion.json").write_text(
        json.dumps({"firmware": "uefi", "nics": [{"name": "eth0", "mac": MAC}]})
    )
    if find_ovmf():
        again = boot_check_spec.as_is(convert.load_source([tmp_path]))
        assert again.firmware == "uefi" and again.nvram.name == "db01_VARS.fd"


def test_the_result_file_round_trips_and_says_where_it_stopped(tmp_path):
    stopped = boot_check.BootCheck(
        "stopped", "initramfs", 95.4, "tcg", ("Gave up", "ALERT! x"),
        "in the initramfs waiting for the root disk", "ALERT! x", 900.0,
    )  # fmt: skip
    boot_check.save(stopped, tmp_path)
    data = json.loads((tmp_path / "boot-check.json").read_text())
    assert data["summary"] == (
        "stopped in the initramfs waiting for the root disk after 95 s (tcg)"
    )
    assert data["last_lines"] == ["Gave up", "ALERT! x"]
    loaded = boot_check.load(tmp_path)
    assert loaded == boot_check.BootCheck.from_json(data)
    assert loaded.stage == "initramfs" and not loaded.boots
    booted = boot_check.BootCheck("boots", "userspace", 74.2, "kvm")
    assert booted.summary() == "boots, userspace after 74 s (kvm)"
    timed_out = boot_check.BootCheck("timeout", "kernel", 900.3, "tcg", timeout=900)
    assert timed_out.failure() == "no userspace after 900 s, last seen in the kernel"
    assert boot_check.load(tmp_path / "nothing") is None


def test_the_default_timeout_is_generous_under_tcg():
    assert boot_check.default_timeout(TCG) == 900
    assert boot_check.default_timeout(accel.Accelerator("kvm", "")) == 300
