"""LVM physical volumes mapped through their logical volumes.

This host (and any live environment without device-mapper) cannot activate
an LV, and reading a disk must not depend on it, so the PV's own metadata is
read here: the label in the first sectors, the metadata area it points at,
and the VG text in it, whose checksums LVM writes (lib/format_text/layout.h,
lib/label/label.h in lvm2). Physical extents no LV uses are SKIP; extents of
LVs are DATA, refined through the LV's filesystem when the LV is one
contiguous run on this PV (then a loop device at its offset is the LV).
Everything else of the PV (label, metadata areas, bootloader area, the tail
past the last extent) is DATA, and so is the whole PV whenever anything in
the metadata is not understood.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass

from converters.extents import ExtentKind, ExtentMap
from converters.partition_table import probe_signature
from converters.used_blocks import FsMap, map_filesystem

log = logging.getLogger(__name__)
SECTOR = 512
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
INITIAL_CRC = 0xF597A6CF
RAW_LOCN_IGNORED = 1


class LvmError(Exception):
    pass


@dataclass(frozen=True)
class PvArea:
    """``count`` physical extents from ``pe`` used by ``lv`` from its
    logical extent ``le``."""

    lv: str
    le: int
    pe: int
    count: int
    linear: bool  # part of a one-stripe ("linear") segment


@dataclass(frozen=True)
class PhysicalVolume:
    vg: str
    uuid: str
    extent_size: int  # bytes
    pe_start: int  # bytes from the start of the PV
    pe_count: int
    areas: tuple[PvArea, ...]
    lv_extents: dict[str, int]  # every LV of the VG: its length in extents
    plain: frozenset[str]  # visible LVs no other LV builds on

    def contiguous(self, lv: str) -> tuple[int, int] | None:
        """(first PE, count) when ``lv`` is a plain LV in one linear run on
        this PV. Hidden sub-LVs never qualify: a thin pool's data, a raid5
        image or a cache's data can start with a filesystem signature whose
        filesystem does not continue in them."""
        runs = sorted((a for a in self.areas if a.lv == lv), key=lambda a: a.le)
        if lv not in self.plain or not runs or not all(a.linear for a in runs):
            return None
        le, pe = 0, runs[0].pe
        for a in runs:
            if a.le != le or a.pe != pe:
                return None
            le, pe = le + a.count, pe + a.count
        return (runs[0].pe, le) if le == self.lv_extents.get(lv) else None


def lvm_crc(data: bytes, crc: int = INITIAL_CRC) -> int:
    """lvm2's calc_crc: CRC-32 (poly 0xEDB88320) without zlib's inversions."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def read_pv(path: str | os.PathLike, offset: int) -> PhysicalVolume:
    """The PV at ``offset`` of ``path`` as its current metadata describes it."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(4 * SECTOR)
        pos = head.find(b"LABELONE")
        if pos < 0 or pos % SECTOR:
            raise LvmError("no LVM label")
        label = head[pos : pos + SECTOR]
        _, _, crc, pvh, kind = struct.unpack_from("<8sQII8s", label)
        if kind != b"LVM2 001" or lvm_crc(label[20:]) != crc:
            raise LvmError("bad LVM label")
        uuid = label[pvh : pvh + 32].decode("ascii")
        locns, i = [], pvh + 40
        for _ in range(2):  # data areas, then metadata areas, each 0-ended
            group = []
            while (loc := struct.unpack_from("<QQ", label, i)) != (0, 0):
                group.append(loc)
                i += 16
            locns.append(group)
            i += 16
        if not locns[1]:
            raise LvmError("PV has no metadata area")
        mda_start, mda_size = locns[1][0]
        text = _read_metadata(f, offset + mda_start, mda_size)
    pv = _pv_from_text(text, uuid)
    if locns[0] and locns[0][0][0] != pv.pe_start:
        raise LvmError("label and metadata disagree on where extents start")
    return pv


def _read_metadata(f, start: int, size: int) -> str:
    f.seek(start)
    header = f.read(SECTOR)
    (crc,) = struct.unpack_from("<I", header)
    if header[4:20] != MDA_MAGIC or lvm_crc(header[4:]) != crc:
        raise LvmError("bad metadata area header")
    off, length, text_crc, flags = struct.unpack_from("<QQII", header, 40)
    if flags & RAW_LOCN_IGNORED or not length:
        raise LvmError("metadata ignored on this PV")
    if not SECTOR <= off < size or length > size - SECTOR:
        raise LvmError("metadata location outside its area")
    first = min(length, size - off)  # the area is a ring after its header
    f.seek(start + off)
    text = f.read(first)
    if first < length:
        f.seek(start + SECTOR)
        text += f.read(length - first)
    if lvm_crc(text) != text_crc:
        raise LvmError("metadata checksum mismatch")
    return text.rstrip(b"\0").decode("utf-8", "replace")  # NUL-terminated


_TOKEN = re.compile(
    r'\s*(?:#[^\n]*|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?)(?![\w.+-])'
    r"|([A-Za-z0-9_.+-]+)|([={}\[\],]))"
)


def parse_config(text: str) -> dict:
    """LVM's text format: ``key = value``, ``name { ... }``, lists in
    brackets, strings, integers and ``#`` comments."""
    tokens: list[tuple[str, object]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise LvmError(f"metadata syntax at {pos}")
            break
        pos = m.end()
        s, num, word, punct = m.groups()
        if s is not None:
            tokens.append(("v", re.sub(r"\\(.)", r"\1", s[1:-1])))
        elif num is not None:
            tokens.append(("v", float(num) if "." in num else int(num)))
        elif word is not None:
            tokens.append(("w", word))
        elif punct is not None:
            tokens.append(("p", punct))
    tree, i = _section(tokens, 0)
    if i != len(tokens):
        raise LvmError("unbalanced metadata")
    return tree


def _section(tokens, i):
    out: dict = {}
    while i < len(tokens) and tokens[i] != ("p", "}"):
        kind, name = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if kind != "w" or nxt not in (("p", "="), ("p", "{")):
            raise LvmError(f"unexpected {name!r} in metadata")
        if nxt == ("p", "{"):
            out[name], i = _section(tokens, i + 2)
            i += 1  # the closing brace
        elif tokens[i + 2] == ("p", "["):
            items, i = [], i + 3
            while tokens[i] != ("p", "]"):
                if tokens[i][0] == "v":
                    items.append(tokens[i][1])
                i += 1
            out[name], i = items, i + 1
        else:
            out[name], i = tokens[i + 2][1], i + 3
    return out, i


def _pv_from_text(text: str, uuid: str) -> PhysicalVolume:
    tree = parse_config(text)
    vgs = [(k, v) for k, v in tree.items() if isinstance(v, dict)]
    if len(vgs) != 1:
        raise LvmError("metadata holds no single volume group")
    vg_name, vg = vgs[0]
    pvs = vg.get("physical_volumes", {})
    ours = [k for k, v in pvs.items() if v.get("id", "").replace("-", "") == uuid]
    if len(ours) != 1:
        raise LvmError("this PV is not in its own metadata")
    pv = pvs[ours[0]]
    extent = int(vg["extent_size"]) * SECTOR
    areas, lv_extents, named, candidates = [], {}, set(), set()
    for lv_name, lv in vg.get("logical_volumes", {}).items():
        total = 0
        segs = [v for k, v in lv.items() if re.fullmatch(r"segment\d+", k)]
        for seg in segs:
            start, count = int(seg["start_extent"]), int(seg["extent_count"])
            total = max(total, start + count)
            areas += _segment_areas(lv_name, seg, start, count, ours[0], pvs)
            named |= {v for v in _values(seg) if isinstance(v, str)}
        lv_extents[lv_name] = total
        if "VISIBLE" in lv.get("status", []) and all(
            s.get("type") == "striped" for s in segs
        ):
            candidates.add(lv_name)
    pe_count = int(pv["pe_count"])
    for a in areas:
        if a.pe < 0 or a.pe + a.count > pe_count:
            raise LvmError(f"LV {a.lv} beyond the PV's extents")
    return PhysicalVolume(
        vg_name,
        uuid,
        extent,
        int(pv["pe_start"]) * SECTOR,
        pe_count,
        tuple(areas),
        lv_extents,
        frozenset(candidates - named),
    )


def _segment_areas(lv, seg, start, count, ours, pvs) -> list[PvArea]:
    if seg.get("type") != "striped":
        # raid, mirror, thin, cache, snapshot... name sub-LVs, which have
        # striped segments of their own. A segment naming PVs directly
        # (pvmove's mirror) is a layout we do not model: trust nothing.
        named = {v for v in _values(seg) if isinstance(v, str)}
        if named & set(pvs):
            raise LvmError(f"LV {lv} segment type {seg.get('type')} names PVs")
        return []
    stripes = seg.get("stripes", [])
    n = int(seg.get("stripe_count", 1))
    if n < 1 or len(stripes) != 2 * n or count % n:
        raise LvmError(f"LV {lv} has a malformed striped segment")
    return [
        PvArea(lv, start, int(stripes[k + 1]), count // n, n == 1)
        for k in range(0, len(stripes), 2)
        if stripes[k] == ours
    ]


def _values(tree):
    for v in tree.values():
        if isinstance(v, dict):
            yield from _values(v)
        elif isinstance(v, list):
            yield from v
        else:
            yield v


def map_pv(path: str | os.PathLike, offset: int, length: int) -> FsMap:
    """The map of the PV at ``[offset, offset+length)`` of ``path``."""
    whole = ExtentMap.whole(length, ExtentKind.DATA)
    try:
        pv = read_pv(path, offset)
    except (LvmError, OSError, KeyError, ValueError, TypeError, struct.error) as e:
        log.warning("MAP lvm offset=%d whole reason=%s", offset, e)
        return FsMap(whole, "LVM2_member", "whole", f"LVM: {e}")
    pe_end = pv.pe_start + pv.pe_count * pv.extent_size
    if pe_end > length:
        return FsMap(whole, "LVM2_member", "whole", "PV larger than its partition")
    emap = whole.overlay(pv.pe_start, pe_end - pv.pe_start, ExtentKind.SKIP)
    spans = [
        (pv.pe_start + a.pe * pv.extent_size, a.count * pv.extent_size)
        for a in pv.areas
    ]
    emap = emap.overlay_ranges(spans, ExtentKind.DATA)
    notes = []
    for lv in sorted({a.lv for a in pv.areas}):
        run = pv.contiguous(lv)
        if run is None:
            notes.append(f"{lv}: whole (not one linear run on this PV)")
            continue
        lv_off = pv.pe_start + run[0] * pv.extent_size
        lv_len = run[1] * pv.extent_size
        sig = probe_signature(path, offset + lv_off, lv_len)
        fs = map_filesystem(path, offset + lv_off, lv_len, sig.type)
        emap = emap.embed(lv_off, fs.map)
        notes.append(f"{lv}: {fs.method}" + (f" ({fs.reason})" if fs.reason else ""))
    log.info("MAP lvm vg=%s offset=%d %s", pv.vg, offset, "; ".join(notes))
    return FsMap(emap, "LVM2_member", f"lvm vg {pv.vg}", "; ".join(notes))
