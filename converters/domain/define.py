"""The domain files next to the disks (NAME.xml, NAME.qemu.sh and, for
UEFI, NAME_VARS.fd) and, when libvirt answers at the given URI, the
domain defined there. A host without libvirt still gets a VM it can start:
the printed `virsh define` line or the QEMU script."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from converters import qemu_cmdline
from converters.domain import builder
from converters.domain.spec import DomainSpec
from converters.events import EventStream

DEFAULT_URI = "qemu:///system"


@dataclass(frozen=True)
class DomainFiles:
    xml: Path
    qemu_script: Path
    nvram: Path | None
    defined_at: str = ""  # the libvirt URI it was defined at, if any
    virsh_define: str = ""  # the command that defines it by hand


def fresh_nvram(spec: DomainSpec) -> None:
    """Each VM gets its own copy of the empty variable store, as each
    machine has its own NVRAM; the physical machine's entries are of no use
    (the guest boots EFI/BOOT/BOOTX64.EFI, which the fixups made sure of)."""
    if spec.firmware == "uefi":
        shutil.copyfile(spec.ovmf.vars_template, spec.nvram)


def define(xml: str, uri: str) -> None:
    import libvirt

    conn = libvirt.open(uri)
    try:
        conn.defineXML(xml)
    finally:
        conn.close()


def write(
    spec: DomainSpec,
    directory: Path,
    events: EventStream,
    libvirt_uri: str | None = None,
) -> DomainFiles:
    xml = builder.build(spec).to_xml()
    xml_path = directory / f"{spec.name}.xml"
    xml_path.write_text(xml)
    fresh_nvram(spec)
    script = directory / f"{spec.name}.qemu.sh"
    script.write_text(qemu_cmdline.script(spec, directory))
    script.chmod(0o755)
    virsh = f"virsh -c {libvirt_uri or DEFAULT_URI} define {xml_path}"
    defined = ""
    if libvirt_uri:
        try:
            define(xml, libvirt_uri)
            defined = libvirt_uri
            events.log(f"domain {spec.name} defined at {libvirt_uri}")
        except Exception as e:  # libvirt.libvirtError, or no bindings at all
            events.log(f"libvirt at {libvirt_uri} not usable ({e})", "warning")
    if not defined:
        events.log(f"domain XML written to {xml_path}; define it with: {virsh}")
    events.log(f"without libvirt, start it with: {script}")
    return DomainFiles(xml_path, script, spec.nvram, defined, virsh)
