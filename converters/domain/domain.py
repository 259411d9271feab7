"""The <domain> element: general settings, <os> and the device lists."""

from __future__ import annotations

from converters.domain import devices
from converters.domain.xmlmodel import Children, Prop, XMLObject


class OS(XMLObject):
    TAG = "os"

    type = Prop("./type")
    arch = Prop("./type/@arch")
    machine = Prop("./type/@machine")
    loader = Prop("./loader")
    loader_readonly = Prop("./loader/@readonly", bool)
    loader_type = Prop("./loader/@type")
    nvram = Prop("./nvram")
    nvram_template = Prop("./nvram/@template")


class Domain(XMLObject):
    TAG = "domain"
    TYPE_KVM = "kvm"
    TYPE_QEMU = "qemu"  # TCG: hosts where KVM does not run guests

    type = Prop("@type")
    name = Prop("./name")
    description = Prop("./description")
    memory = Prop("./memory", int)
    memory_unit = Prop("./memory/@unit")
    vcpu = Prop("./vcpu", int)
    os = Children(OS, single=True)
    acpi = Prop("./features/acpi", bool)
    apic = Prop("./features/apic", bool)
    cpu_mode = Prop("./cpu/@mode")
    clock_offset = Prop("./clock/@offset")
    on_poweroff = Prop("./on_poweroff")
    on_reboot = Prop("./on_reboot")
    on_crash = Prop("./on_crash")
    disks = Children(devices.Disk, "./devices")
    interfaces = Children(devices.Interface, "./devices")
    serials = Children(devices.Serial, "./devices")
    consoles = Children(devices.Console, "./devices")
    channels = Children(devices.Channel, "./devices")
    graphics = Children(devices.Graphics, "./devices")
    videos = Children(devices.Video, "./devices")
    rngs = Children(devices.Rng, "./devices")
