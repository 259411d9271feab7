"""Foreign VM images for the import tests, made from a disk with qemu-img
as other hypervisors export them: VMDK (stream-optimised, as in an OVA),
VHD, VHDX, VDI, and an OVA with a VMware-style OVF and a SHA256 manifest."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile
from pathlib import Path

EXPORTS = {
    "vmdk": ("vmdk", ["-o", "subformat=streamOptimized"]),
    "vhd": ("vpc", ["-o", "subformat=dynamic"]),
    "vhdx": ("vhdx", []),
    "vdi": ("vdi", []),
}

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity_mib}" ovf:capacityAllocationUnits="byte * 2^20"
        ovf:diskId="vmdisk1" ovf:fileRef="file1"
        ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>1536MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1536</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:AA:BB:CC</rasd:Address>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def export(disk: Path, kind: str, dest: Path) -> Path:
    fmt, opts = EXPORTS[kind]
    src_fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", src_fmt, "-O", fmt, *opts, str(disk), str(dest)],
        check=True,
    )
    return dest


def make_ova(disk: Path, folder: Path, name: str, firmware: str = "bios") -> Path:
    """NAME.ova: the OVF first (as the OVF spec requires), the manifest,
    then the stream-optimised disk."""
    folder.mkdir(parents=True, exist_ok=True)
    vmdk = export(disk, "vmdk", folder / f"{name}-disk1.vmdk")
    src_fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
    info = subprocess.run(
        ["qemu-img", "info", "-f", src_fmt, "--output=json", str(disk)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    capacity = json.loads(info)["virtual-size"] >> 20
    ovf = folder / f"{name}.ovf"
    ovf.write_text(
        OVF.format(
            disk=vmdk.name,
            size=vmdk.stat().st_size,
            capacity_mib=capacity,
            name=name,
            firmware="efi" if firmware == "uefi" else "bios",
        )
    )
    mf = folder / f"{name}.mf"
    mf.write_text("".join(f"SHA256({p.name})= {_sha256(p)}\n" for p in (ovf, vmdk)))
    ova = folder / f"{name}.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for p in (ovf, mf, vmdk):
            tar.add(p, arcname=p.name)
    for p in (ovf, mf, vmdk):
        p.unlink()
    return ova


def vmdk_create_type(ova: Path) -> str:
    """The createType in the descriptor of the OVA's VMDK (the text
    header at the start of a stream-optimised or sparse VMDK)."""
    with tarfile.open(ova) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".vmdk"))
        head = tar.extractfile(member).read(64 << 10)
    found = re.search(rb'createType="([^"]+)"', head)
    return found.group(1).decode() if found else ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
