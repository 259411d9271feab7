"""Device names that change with the hardware (/dev/sda1 on AHCI is /dev/vda1
on virtio, /dev/nvme0n1p1 on the next server) become `UUID=` in fstab,
crypttab, the resume configuration and grub's kernel command line.

Everything is planned first (`plan`), so a name that cannot be resolved is
reported before a single file is written; `apply` then writes the plan.
LVM, device-mapper and md names are stable and stay as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from converters.fixups.guest import Filesystem, GuestOS

STABLE = (
    "UUID=",
    "LABEL=",
    "PARTUUID=",
    "PARTLABEL=",
    "/dev/disk/by-uuid/",
    "/dev/disk/by-label/",
    "/dev/disk/by-partuuid/",
    "/dev/disk/by-partlabel/",
    "/dev/mapper/",
    "/dev/md",
)
_LETTERED = re.compile(r"^/dev/(?:sd|hd|vd|xvd)([a-z]+)(\d*)$")
_NVME = re.compile(r"^/dev/(nvme\d+n\d+)(?:p(\d+))?$")
_MMC = re.compile(r"^/dev/(mmcblk\d+)(?:p(\d+))?$")
_BY_ID = re.compile(r"^/dev/disk/by-id/(.+?)(?:-part(\d+))?$")
_CMDLINE_DEV = re.compile(r"(?<![\w.-])(root|resume)=([^\s\"']+)")
_RESUME_VAR = re.compile(r"^(\s*RESUME=)([\"']?)([^\"'\s]*)([\"']?)", re.M)
_GRUB_NO_UUID = re.compile(r"^(\s*GRUB_DISABLE_LINUX_UUID=)[\"']?true[\"']?", re.M)


@dataclass(frozen=True)
class SourceDisk:
    """A disk as the source machine named it, in capture order."""

    name: str  # kernel name: sda, nvme0n1
    serial: str = ""
    model: str = ""


@dataclass
class Plan:
    renames: dict[str, str] = field(default_factory=dict)  # old -> UUID=...
    unresolved: list[str] = field(default_factory=list)  # "file: name"
    files: dict[str, str] = field(default_factory=dict)  # path -> new text


def _letters_index(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def locate(spec: str, disks: list[SourceDisk]) -> tuple[int, int | None] | None:
    """(disk index, partition or None) that a kernel device name pointed to
    on the source machine, or None when the name says nothing about it."""
    names = [d.name for d in disks]
    m = _LETTERED.match(spec)
    if m:
        base = spec.removeprefix("/dev/").rstrip("0123456789")
        idx = names.index(base) if base in names else _letters_index(m.group(1))
        return idx, int(m.group(2)) if m.group(2) else None
    for regex in (_NVME, _MMC):
        m = regex.match(spec)
        if m:
            if m.group(1) in names:
                idx = names.index(m.group(1))
            elif len(names) <= 1:
                idx = 0  # one disk: whatever it was called, it is this one
            else:
                return None
            return idx, int(m.group(2)) if m.group(2) else None
    m = _BY_ID.match(spec)
    if m:
        # by-id names carry the disk's model and serial, which the inventory
        # recorded; the new hardware has other ones.
        for idx, d in enumerate(disks):
            if d.serial and d.serial in m.group(1):
                return idx, int(m.group(2)) if m.group(2) else None
    return None


def is_unstable(spec: str) -> bool:
    if not spec.startswith("/dev/") or spec.startswith(STABLE):
        return False
    # /dev/VG/LV (LVM) and /dev/cciss-style paths have a directory; of those
    # only by-id and by-path name hardware.
    parts = spec.split("/")
    if len(parts) > 3:
        return spec.startswith(("/dev/disk/by-id/", "/dev/disk/by-path/"))
    return True


def resolve(spec: str, fss: list[Filesystem], disks: list[SourceDisk]) -> str | None:
    where = locate(spec, disks)
    if where is None:
        return None
    for fs in fss:
        if (fs.disk, fs.partition) == where and fs.uuid:
            return f"UUID={fs.uuid}"
    return None


class _Renamer:
    def __init__(self, plan: Plan, fss, disks) -> None:
        self.plan, self.fss, self.disks = plan, fss, disks

    def __call__(self, where: str, spec: str) -> str:
        if not is_unstable(spec):
            return spec
        new = self.plan.renames.get(spec) or resolve(spec, self.fss, self.disks)
        if new is None:
            self.plan.unresolved.append(f"{where}: {spec}")
            return spec
        self.plan.renames[spec] = new
        return new


def _rewrite_field(text: str, index: int, rename, where: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            out.append(line)
            continue
        words = list(re.finditer(r"\S+", line))
        if len(words) > index:
            w = words[index]
            line = line[: w.start()] + rename(where, w.group()) + line[w.end() :]
        out.append(line)
    return "".join(out)


def _rewrite_grub_defaults(text: str, rename, where: str) -> str:
    text = _GRUB_NO_UUID.sub(
        "# ferry convert: device names change with the hardware, boot by UUID\n"
        r"\g<1>false",
        text,
    )
    return _CMDLINE_DEV.sub(lambda m: f"{m.group(1)}={rename(where, m.group(2))}", text)


def _rewrite_resume(text: str, rename, where: str) -> str:
    return _RESUME_VAR.sub(
        lambda m: m.group(1) + m.group(2) + rename(where, m.group(3)) + m.group(4),
        text,
    )


def plan(guest: GuestOS, disks: list[SourceDisk]) -> Plan:
    result = Plan()
    rename = _Renamer(result, guest.filesystems(), disks)
    edits = [
        (["/etc/fstab"], lambda t, w: _rewrite_field(t, 0, rename, w)),
        (["/etc/crypttab"], lambda t, w: _rewrite_field(t, 1, rename, w)),
        (
            ["/etc/initramfs-tools/initramfs.conf"]
            + guest.glob("/etc/initramfs-tools/conf.d/*"),
            lambda t, w: _rewrite_resume(t, rename, w),
        ),
        (
            ["/etc/default/grub"] + guest.glob("/etc/default/grub.d/*.cfg"),
            lambda t, w: _rewrite_grub_defaults(t, rename, w),
        ),
    ]
    for paths, edit in edits:
        for path in paths:
            if not guest.is_file(path):
                continue
            old = guest.read(path)
            new = edit(old, path)
            if new != old:
                result.files[path] = new
    return result


def apply(guest: GuestOS, result: Plan) -> None:
    for path, text in result.files.items():
        guest.write(path, text)
