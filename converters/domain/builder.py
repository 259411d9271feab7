"""DomainSpec -> Domain: ferry's defaults for a converted machine. q35
for both firmwares (PCIe, and what current libvirt and virt-install
choose); SeaBIOS is libvirt's default loader, OVMF is named explicitly
with this VM's own NVRAM copy; virtio everywhere; a serial console, since
physical servers are often managed over one; the guest agent channel."""

from __future__ import annotations

from converters.domain import devices
from converters.domain.domain import OS, Domain
from converters.domain.spec import DomainSpec

MACHINE = "q35"


def _disk_name(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return "vd" + name


def build(spec: DomainSpec) -> Domain:
    os = OS(type="hvm", arch="x86_64", machine=MACHINE)
    if spec.firmware == "uefi":
        os.loader = str(spec.ovmf.code)
        os.loader_readonly = True
        os.loader_type = "pflash"
        os.nvram = str(spec.nvram)
        os.nvram_template = str(spec.ovmf.vars_template)
    dom = Domain(
        type=Domain.TYPE_KVM if spec.kvm else Domain.TYPE_QEMU,
        name=spec.name,
        description=spec.description or None,
        memory=spec.memory_mib,
        memory_unit="MiB",
        vcpu=spec.vcpus,
        os=os,
        acpi=True,
        apic=True,
        # host-passthrough gives the guest what the converted system ran
        # on; under TCG "maximum" is the closest (libvirt >= 7.1).
        cpu_mode="host-passthrough" if spec.kvm else "maximum",
        clock_offset="utc",
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="destroy",
    )
    for i, disk in enumerate(spec.disks):
        dom.disks.append(
            devices.Disk(
                type=devices.Disk.TYPE_FILE,
                device="disk",
                driver_name="qemu",
                driver_type=disk.format,
                # the guest's TRIM frees space in the qcow2
                driver_discard="unmap",
                source_file=str(disk.path),
                target_dev=_disk_name(i),
                target_bus=devices.Disk.BUS_VIRTIO,
                boot_order=1 if i == spec.boot_disk else None,
            )
        )
    for nic in spec.nics:
        dom.interfaces.append(
            devices.Interface(
                type=devices.Interface.TYPE_NETWORK,
                mac=nic.mac,
                source_network=spec.network,
                model="virtio",
            )
        )
    dom.serials.append(devices.Serial(type="pty", target_port=0))
    dom.consoles.append(
        devices.Console(type="pty", target_type="serial", target_port=0)
    )
    dom.channels.append(
        devices.Channel(
            type="unix", target_type="virtio", target_name=devices.Channel.GUEST_AGENT
        )
    )
    dom.graphics.append(
        devices.Graphics(
            type="vnc", autoport=True, listen_type="address", listen="127.0.0.1"
        )
    )
    dom.videos.append(devices.Video(model="vga"))
    dom.rngs.append(
        devices.Rng(model="virtio", backend_model="random", backend="/dev/urandom")
    )
    return dom
