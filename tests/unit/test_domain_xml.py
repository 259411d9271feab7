"""Libvirt domain XML from declared data, diffed against checked-in files,
valid by libvirt's own schema, and the same machine as the QEMU line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from converters import accel, qemu_cmdline
from converters.domain import builder, define, devices
from converters.domain.domain import Domain
from converters.domain.firmware import Ovmf
from converters.domain.spec import (
    DiskSpec,
    DomainSpec,
    NicSpec,
    memory_mib,
    parse_memory,
    vcpus,
)
from converters.events import EventStream

DATA = Path(__file__).parent / "data"
OVMF = Ovmf(
    Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
)

SPECS = {
    "domain-bios.xml": DomainSpec(
        name="phys-bios",
        vcpus=2,
        memory_mib=2048,
        firmware="bios",
        disks=(DiskSpec(Path("/srv/ferry/s1/sda.qcow2")),),
        nics=(NicSpec("52:54:00:fe:01:01", "ens8"),),
        kvm=True,
    ),
    "domain-uefi.xml": DomainSpec(
        name="phys-uefi-lvm",
        vcpus=4,
        memory_mib=4096,
        firmware="uefi",
        disks=(
            DiskSpec(Path("/srv/ferry/s2/sda.qcow2")),
            DiskSpec(Path("/srv/ferry/s2/sdb.raw"), "raw"),
        ),
        nics=(
            NicSpec("52:54:00:fe:01:01", "enp0s8"),
            NicSpec("52:54:00:fe:01:02", "enp0s9"),
        ),
        kvm=False,
        network="lab",
        ovmf=OVMF,
        nvram=Path("/srv/ferry/s2/phys-uefi-lvm_VARS.fd"),
    ),
}


@pytest.mark.parametrize("expected", sorted(SPECS))
def test_domain_xml_matches_checked_in_file(expected):
    xml = builder.build(SPECS[expected]).to_xml()
    assert xml == (DATA / expected).read_text()


@pytest.mark.parametrize("expected", sorted(SPECS))
def test_checked_in_xml_round_trips_through_the_model(expected):
    text = (DATA / expected).read_text()
    dom = Domain.from_xml(text)
    assert dom.to_xml() == text
    assert [d.target_dev for d in dom.disks][:1] == ["vda"]
    assert all(i.model == "virtio" for i in dom.interfaces)


@pytest.mark.parametrize("expected", sorted(SPECS))
def test_checked_in_xml_is_valid_by_libvirts_schema(expected):
    # libvirt's in-process test driver validates against domain.rng: no
    # daemon needed, and an invalid element fails the define.
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    try:
        flags = libvirt.VIR_DOMAIN_DEFINE_VALIDATE
        dom = conn.defineXMLFlags((DATA / expected).read_text(), flags)
        assert dom.name() == SPECS[expected].name
    finally:
        conn.close()


def test_unset_properties_write_nothing():
    assert devices.Disk(type="file").to_xml() == '<disk type="file"/>\n'
    assert (
        devices.Graphics(type="vnc", autoport=False).to_xml()
        == '<graphics type="vnc"/>\n'
    )


def test_unknown_property_is_an_error():
    with pytest.raises(AttributeError):
        devices.Disk(bus="virtio")


def test_qemu_line_describes_the_same_machine():
    spec = SPECS["domain-uefi.xml"]
    argv = qemu_cmdline.command(
        spec, accel.Accelerator("tcg", ""), serial="file:/tmp/c.log"
    )
    line = " ".join(argv)
    assert "-machine q35 -accel tcg" in line
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF.code}" in line
    assert "unit=1,file=/srv/ferry/s2/phys-uefi-lvm_VARS.fd" in line
    assert "file=/srv/ferry/s2/sda.qcow2,format=qcow2" in line
    assert "file=/srv/ferry/s2/sdb.raw,format=raw" in line
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in line
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:fe:01:02" in line
    assert "-m 4096 -smp 4" in line


def test_sizes_follow_the_inventory_within_caps():
    assert parse_memory("4G") == 4096 and parse_memory("512M") == 512
    assert parse_memory("2048") == 2048
    with pytest.raises(ValueError):
        parse_memory("lots")
    assert memory_mib(None, 8 << 30) == 8192
    assert memory_mib(None, 512 << 30) == 16384  # capped; --memory overrides
    assert memory_mib(65536, None) == 65536
    assert vcpus(None, 64) == 8 and vcpus(None, None) == 2 and vcpus(12, 2) == 12


def test_domain_files_are_written_and_defined_when_libvirt_answers(tmp_path):
    pytest.importorskip("libvirt")
    spec = replace(
        SPECS["domain-uefi.xml"],
        nvram=tmp_path / "vm_VARS.fd",
        ovmf=Ovmf(OVMF.code, _vars_template(tmp_path)),
    )
    files = define.write(spec, tmp_path, EventStream(), "test:///default")
    assert files.defined_at == "test:///default"
    assert files.xml.read_text() == builder.build(spec).to_xml()
    assert files.nvram.read_bytes() == b"VARS"  # a fresh copy of the template
    script = files.qemu_script.read_text()
    assert script.startswith("#!/bin/sh\n") and "virtio-net-pci" in script


def test_unreachable_libvirt_leaves_the_virsh_line(tmp_path):
    spec = replace(SPECS["domain-bios.xml"])
    events = EventStream()
    said = []
    events.subscribe(lambda e: said.append(getattr(e, "message", "")))
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    files = define.write(spec, tmp_path, events, uri)
    assert files.defined_at == ""
    assert files.virsh_define == f"virsh -c {uri} define {tmp_path}/phys-bios.xml"
    assert any(files.virsh_define in s for s in said)
    assert files.xml.exists() and files.nvram is None


def _vars_template(tmp_path):
    template = tmp_path / "template_VARS.fd"
    template.write_bytes(b"VARS")
    return template
