"""The fixups in order, on any backend: inspect and check everything first
(so an unsupported guest is refused before a byte changes), then pin NIC
names, disable other hypervisors' agents, rewrite device names, make the
UEFI fallback loader, rebuild every initramfs (which copies the .link files
and the resume device in) and last regenerate grub (which picks up the new
initramfs files and root=).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from converters.events import EventStream
from converters.fixups import (
    agents,
    bootloader,
    device_names,
    initramfs,
    inspect,
    nic_names,
)
from converters.fixups.device_names import SourceDisk
from converters.fixups.guest import GuestOS, UnsupportedGuest
from converters.fixups.inspect import GuestInfo
from converters.fixups.nic_names import NicPin


@dataclass
class Request:
    """What the target needs of the guest."""

    source_disks: list[SourceDisk] = field(default_factory=list)
    nics: tuple = ()  # inventory Nic objects (name, mac); () reads the guest's
    firmware: str = ""  # the source's firmware per its inventory, if known
    modules: tuple[str, ...] = initramfs.VIRTIO_MODULES
    pin_nics: bool = True


@dataclass
class Context:
    """What the checks found, handed to every step."""

    guest: GuestOS
    request: Request
    info: GuestInfo
    pins: list[NicPin]
    names: device_names.Plan
    events: EventStream
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], None]


def prepare(guest: GuestOS, request: Request, events: EventStream) -> Context:
    """Inspect and check; raises UnsupportedGuest naming every gap."""
    info = inspect.inspect(guest)
    if request.firmware and request.firmware != info.firmware:
        # The live side saw the firmware the machine really booted with.
        events.log(
            f"inventory says {request.firmware}, the disk suggests {info.firmware}: "
            f"using {request.firmware}",
            "warning",
        )
        info = _with_firmware(info, request.firmware)
    events.log(
        f"guest: {info.name}; kernels {', '.join(k.version for k in info.kernels)}; "
        f"{info.initramfs_tool or 'no initramfs tool'}; {info.firmware}; "
        f"root {info.root}"
    )
    gaps = inspect.missing(info)
    if info.kernels:
        gaps += initramfs.check(guest, info, request.modules)
    if request.pin_nics:
        gaps += nic_names.check(guest)
    names = device_names.plan(guest, request.source_disks)
    gaps += [f"a filesystem for {u} (not on these disks)" for u in names.unresolved]
    if gaps:
        raise UnsupportedGuest(info.name or "this guest", gaps)
    pins = (
        nic_names.pins(guest, request.nics, info.hostname) if request.pin_nics else []
    )
    return Context(guest, request, info, pins, names, events)


def _with_firmware(info: GuestInfo, firmware: str) -> GuestInfo:
    from dataclasses import replace

    return replace(info, firmware=firmware)


def pin_nics(ctx: Context) -> None:
    nic_names.apply(ctx.guest, ctx.pins)
    for pin in ctx.pins:
        ctx.events.log(f"nic: {pin.name} pinned to {pin.mac} (from {pin.source})")
    if not ctx.pins and ctx.request.pin_nics:
        ctx.events.log("nic: no interface names to pin", "warning")


def disable_agents(ctx: Context) -> None:
    for line in agents.disable(ctx.guest):
        ctx.events.log(f"agents: {line}")


def rename_devices(ctx: Context) -> None:
    device_names.apply(ctx.guest, ctx.names)
    for old, new in sorted(ctx.names.renames.items()):
        ctx.events.log(f"devices: {old} -> {new}")
    for path in ctx.names.files:
        ctx.events.log(f"devices: rewrote {path}")


def uefi_fallback(ctx: Context) -> None:
    if ctx.info.firmware == "uefi":
        ctx.events.log("uefi: " + bootloader.ensure_uefi_fallback(ctx.guest, ctx.info))


def rebuild_initramfs(ctx: Context) -> None:
    initramfs.ensure_modules(ctx.guest, ctx.info, ctx.request.modules, ctx.events)


def regenerate_grub(ctx: Context) -> None:
    roots = bootloader.regenerate_grub(ctx.guest, ctx.info)
    ctx.events.log(
        f"grub: {ctx.info.grub.config} boots root={', '.join(sorted(set(roots)))}"
    )


STEPS = (
    Step("pin NIC names", pin_nics),
    Step("other hypervisors' agents", disable_agents),
    Step("device names to UUID", rename_devices),
    Step("UEFI fallback loader", uefi_fallback),
    Step("rebuild initramfs", rebuild_initramfs),
    Step("regenerate grub", regenerate_grub),
)


def run(
    guest: GuestOS,
    request: Request,
    events: EventStream,
    steps: tuple[Step, ...] = STEPS,
) -> Context:
    ctx = prepare(guest, request, events)
    for step in steps:
        events.step(step.name)
        step.run(ctx)
    return ctx
