"""Safe conversion of captured disks: the fixups run on a qcow2 overlay of
each disk and are committed into the disks only when every fixup and every
check passed. A failed or interrupted conversion leaves the captured disks
exactly as received (the overlays are thrown away) and can simply be run
again.

The one window that writes the captured disks is `qemu-img commit`. Before
it starts, a commit record is written; a run that finds one (the previous
run died while committing) finishes the commit first: committing the same
overlay again writes the same bytes, so the disks end up whole either way.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from converters.events import Event, EventStream, Log, Step
from converters.fixups import guestfs_backend, pipeline
from converters.fixups.device_names import SourceDisk
from converters.fixups.inspect import GuestInfo
from converters.fixups.nic_names import NicPin
from converters.inventory import Machine

log = logging.getLogger(__name__)

LOG_FILE = "convert.log"
RESULT_FILE = "conversion.json"
COMMIT_RECORD = "convert-commit.json"
LOCK_FILE = "convert.lock"
OVERLAY_SUFFIX = ".convert-overlay"


class ConversionError(Exception):
    """The conversion failed; the captured disks are unchanged."""


@dataclass(frozen=True)
class Source:
    """Captured disks in source order, with the capture's inventory."""

    disks: tuple[Path, ...]
    directory: Path  # where the log, overlays and the domain files go
    name: str  # default VM name: the inventory's hostname or the folder's
    inventory: Machine | None = None

    @property
    def source_disks(self) -> list[SourceDisk]:
        if self.inventory and len(self.inventory.disks) == len(self.disks):
            return [SourceDisk(d.name, d.serial, d.model) for d in self.inventory.disks]
        return [SourceDisk(p.stem) for p in self.disks]


@dataclass(frozen=True)
class Conversion:
    source: Source
    guest: GuestInfo
    pins: tuple[NicPin, ...]
    formats: tuple[str, ...] = ()  # of source.disks, as qemu-img sees them
    renames: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def log(self) -> Path:
        return self.source.directory / LOG_FILE


def load_source(paths: list[Path]) -> Source:
    """A session folder (session.json, inventory.json, DISK.qcow2) or disk
    image paths in source order."""
    if len(paths) == 1 and paths[0].is_dir():
        return _session_source(paths[0])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConversionError(f"no such disk image: {', '.join(missing)}")
    disks = tuple(p.resolve() for p in paths)
    return Source(disks, disks[0].parent, disks[0].stem)


def _session_source(folder: Path) -> Source:
    folder = folder.resolve()
    inventory = None
    if (folder / "inventory.json").exists():
        data = json.loads((folder / "inventory.json").read_text())
        inventory = Machine.from_json(data) if data else None
    names: list[str] = []
    if (folder / "session.json").exists():
        records = json.loads((folder / "session.json").read_text())["disks"]
        names = [d["name"] for d in records]
        # a capture still running (or cut off) is not a disk to convert
        partial = [d["name"] for d in records if not d.get("complete", True)]
        if partial:
            raise ConversionError(
                f"{folder}: the capture of {', '.join(partial)} is not complete"
            )
    elif inventory:
        names = [d.name for d in inventory.disks]
    if names:
        disks = tuple(folder / f"{n}.qcow2" for n in names)
    else:
        disks = tuple(sorted(folder.glob("*.qcow2")))
    absent = [d.name for d in disks if not d.is_file()]
    if not disks or absent:
        raise ConversionError(
            f"{folder} holds no captured disks"
            + (f" (missing {', '.join(absent)})" if absent else "")
        )
    name = (inventory.hostname if inventory else "") or folder.name
    return Source(disks, folder, name, inventory)


def overlay_path(disk: Path) -> Path:
    return disk.with_name(disk.name + OVERLAY_SUFFIX)


def _qemu_img(*args: str) -> None:
    out = subprocess.run(
        ["qemu-img", *args], capture_output=True, text=True, errors="replace"
    )
    if out.returncode != 0:
        raise ConversionError(f"qemu-img {args[0]} failed: {out.stderr.strip()}")


def image_format(path: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise ConversionError(
            f"{path} is not a readable disk image: {out.stderr.strip()}"
        )
    return json.loads(out.stdout)["format"]


def _make_overlays(disks: tuple[Path, ...]) -> tuple[list[Path], list[str]]:
    overlays, formats = [], []
    for disk in disks:
        ov = overlay_path(disk)
        ov.unlink(missing_ok=True)  # left by a failed run: never reused
        fmt = image_format(disk)
        _qemu_img(
            "create", "-q", "-f", "qcow2", "-b", str(disk.resolve()),
            "-F", fmt, str(ov),
        )  # fmt: skip
        overlays.append(ov)
        formats.append(fmt)
    return overlays, formats


def _discard(overlays: list[Path]) -> None:
    for ov in overlays:
        ov.unlink(missing_ok=True)


def _commit(directory: Path, overlays: list[Path], events: EventStream) -> None:
    record = directory / COMMIT_RECORD
    record.write_text(json.dumps([str(o) for o in overlays]))
    _fsync(record)
    for ov in overlays:
        if ov.exists():
            events.step("commit", ov.name.removesuffix(OVERLAY_SUFFIX))
            _qemu_img("commit", "-q", str(ov))
            ov.unlink()
    record.unlink()


def finish_interrupted_commit(directory: Path, events: EventStream) -> bool:
    """Complete a commit a previous run started; True if there was one."""
    record = directory / COMMIT_RECORD
    if not record.exists():
        return False
    overlays = [Path(p) for p in json.loads(record.read_text())]
    events.log("finishing the commit an interrupted conversion started", "warning")
    _commit(directory, overlays, events)
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConversionError(
                f"another conversion is running in {directory}"
            ) from None
        yield


@contextmanager
def _log_to_file(path: Path, events: EventStream) -> Iterator[None]:
    """Everything the engines and the guest's tools say goes to the log
    next to the disks; the events go there too, so the log reads alone."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    package = logging.getLogger("converters")
    old_level, old_propagate = package.level, package.propagate
    # The file takes everything; the console (the root logger's handlers)
    # still gets only what it asked for (-v or not), not the tools' output.
    forward = _Forward(logging.getLogger().getEffectiveLevel())
    package.addHandler(handler)
    package.addHandler(forward)
    package.setLevel(logging.DEBUG)
    package.propagate = False
    active = True

    def to_log(event: Event) -> None:
        if not active:
            return
        if isinstance(event, Step):
            log.info("== %s %s", event.name, event.detail)
        elif isinstance(event, Log):
            log.info("%s: %s", event.level, event.message)

    events.subscribe(to_log)
    try:
        yield
    finally:
        active = False
        package.removeHandler(handler)
        package.removeHandler(forward)
        package.setLevel(old_level)
        package.propagate = old_propagate
        handler.close()


class _Forward(logging.Handler):
    """Hands records at or above its level to the root logger's handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        for h in logging.getLogger().handlers:
            if record.levelno >= h.level:
                h.handle(record)


def convert(
    source: Source,
    events: EventStream,
    *,
    pin_nics: bool = True,
    steps: tuple[pipeline.Step, ...] | None = None,
) -> Conversion:
    """Convert the guest on `source.disks` in place, all or nothing."""
    started = time.monotonic()
    directory = source.directory
    with _locked(directory), _log_to_file(directory / LOG_FILE, events):
        log.info("convert %s", " ".join(str(d) for d in source.disks))
        finish_interrupted_commit(directory, events)
        request = pipeline.Request(
            source_disks=source.source_disks,
            nics=source.inventory.nics if source.inventory else (),
            firmware=source.inventory.firmware if source.inventory else "",
            pin_nics=pin_nics,
        )
        events.step("overlays", f"{len(source.disks)} disk(s)")
        overlays, formats = _make_overlays(source.disks)
        try:
            events.step("open guest", "libguestfs appliance")
            fmts = ["qcow2"] * len(overlays)
            with guestfs_backend.open_guest(overlays, fmts) as guest:
                ctx = pipeline.run(guest, request, events, steps or pipeline.STEPS)
        except Exception as e:  # FixupError, guestfs' RuntimeError, OSError...
            _discard(overlays)
            events.log(f"conversion failed, disks unchanged: {e}", "error")
            raise ConversionError(str(e)) from e
        except BaseException:
            _discard(overlays)  # interrupted: the same promise holds
            raise
        _commit(directory, overlays, events)
        result = Conversion(
            source,
            ctx.info,
            tuple(ctx.pins),
            tuple(formats),
            dict(ctx.names.renames),
            time.monotonic() - started,
        )
        _save_result(result)
        events.log(f"converted {ctx.info.name} in {result.seconds:.0f} s")
        return result


def _save_result(result: Conversion) -> None:
    data = {
        "guest": result.guest.name,
        "firmware": result.guest.firmware,
        "kernels": [k.version for k in result.guest.kernels],
        "nics": [{"name": p.name, "mac": p.mac} for p in result.pins],
        "renames": result.renames,
        "disks": [str(d) for d in result.source.disks],
        "seconds": round(result.seconds, 1),
        "at": time.time(),
    }
    (result.source.directory / RESULT_FILE).write_text(json.dumps(data, indent=2))
