"""A plain QEMU command line for a DomainSpec: for hosts without libvirt,
and for tests that boot a converted machine directly. It describes the same
machine as the libvirt XML (q35, the same firmware, virtio disks in source
order, virtio NICs with the physical MACs, the guest agent channel), with
user-mode networking, which needs no host setup."""

from __future__ import annotations

import shlex
from pathlib import Path

from converters import accel
from converters.domain.spec import DomainSpec

QEMU = accel.QEMU


def command(
    spec: DomainSpec,
    accelerator: accel.Accelerator | None = None,
    serial: str = "mon:stdio",
    agent_socket: Path | None = None,
    netdev: str = "user",
) -> list[str]:
    """argv for qemu-system-x86_64. `serial` is a QEMU chardev spec
    (mon:stdio for a terminal, file:PATH for tests)."""
    acc = accelerator or (
        accel.Accelerator("kvm", "") if spec.kvm else accel.Accelerator("tcg", "")
    )
    cmd = [
        QEMU,
        "-name", spec.name,
        "-machine", "q35",
        *acc.qemu_args(),
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults",
        "-display", "none",
        "-serial", serial,
    ]  # fmt: skip
    if spec.firmware == "uefi":
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={spec.ovmf.code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={spec.nvram}",
        ]  # fmt: skip
    for i, disk in enumerate(spec.disks):
        boot = ",bootindex=1" if i == spec.boot_disk else ""
        drive = f"if=none,id=disk{i},file={disk.path},format={disk.format}"
        cmd += [
            "-drive", drive + ",discard=unmap",
            "-device", f"virtio-blk-pci,drive=disk{i}{boot}",
        ]  # fmt: skip
    for i, nic in enumerate(spec.nics):
        cmd += [
            "-netdev", f"{netdev},id=net{i}",
            "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac}",
        ]  # fmt: skip
    if agent_socket:
        cmd += [
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=qga0,path={agent_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]  # fmt: skip
    cmd += ["-device", "virtio-rng-pci"]
    return cmd


def script(spec: DomainSpec, directory: Path) -> str:
    """A shell script that starts the VM on this host, console on the
    terminal (Ctrl-A X quits). Extra arguments are passed to QEMU."""
    argv = command(spec, accel.detect(), agent_socket=directory / f"{spec.name}.qga")
    lines, i = [shlex.quote(argv[0])], 1
    while i < len(argv):
        # one option and its value a line, so a reader can edit it
        if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{argv[i]} {shlex.quote(argv[i + 1])}")
            i += 2
        else:
            lines.append(argv[i])
            i += 1
    body = " \\\n    ".join(lines)
    return (
        "#!/bin/sh\n"
        f"# {spec.name}: written by ferry convert for hosts without libvirt.\n"
        "# The serial console is this terminal; Ctrl-A X stops the VM.\n"
        f'exec {body} \\\n    "$@"\n'
    )
