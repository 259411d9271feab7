"""One small class per libvirt device ferry writes. Allowed values are
named constants; defaults live in domain.builder, not here."""

from __future__ import annotations

from converters.domain.xmlmodel import Prop, XMLObject


class Disk(XMLObject):
    TAG = "disk"
    TYPE_FILE = "file"
    BUS_VIRTIO = "virtio"

    type = Prop("@type")
    device = Prop("@device")
    driver_name = Prop("./driver/@name")
    driver_type = Prop("./driver/@type")
    driver_discard = Prop("./driver/@discard")
    source_file = Prop("./source/@file")
    target_dev = Prop("./target/@dev")
    target_bus = Prop("./target/@bus")
    boot_order = Prop("./boot/@order", int)


class Interface(XMLObject):
    TAG = "interface"
    TYPE_NETWORK = "network"
    TYPE_BRIDGE = "bridge"

    type = Prop("@type")
    mac = Prop("./mac/@address")
    source_network = Prop("./source/@network")
    source_bridge = Prop("./source/@bridge")
    model = Prop("./model/@type")


class Serial(XMLObject):
    TAG = "serial"

    type = Prop("@type")
    target_port = Prop("./target/@port", int)


class Console(XMLObject):
    TAG = "console"

    type = Prop("@type")
    target_type = Prop("./target/@type")
    target_port = Prop("./target/@port", int)


class Channel(XMLObject):
    TAG = "channel"
    GUEST_AGENT = "org.qemu.guest_agent.0"

    type = Prop("@type")
    target_type = Prop("./target/@type")
    target_name = Prop("./target/@name")


class Graphics(XMLObject):
    TAG = "graphics"

    type = Prop("@type")
    autoport = Prop("@autoport", bool)
    listen_type = Prop("./listen/@type")
    listen = Prop("./listen/@address")


class Video(XMLObject):
    TAG = "video"

    model = Prop("./model/@type")


class Rng(XMLObject):
    TAG = "rng"

    model = Prop("@model")
    backend_model = Prop("./backend/@model")
    backend = Prop("./backend")
