"""V2P deploy: an image from ``ferry serve``, an http(s) URL or a local file
written onto this machine's disks (the engine the TUI and ``ferry deploy``
call; tui/deploy_link.py is the TUI's seam).

    list_images(server)            what a server offers
    plan_deploy(request)           every check, before a byte is written
    deploy(request, events)        plan, then write and verify each disk

After the write, a disk larger than its image has its last partition and
filesystem grown (deploy_grow), and the first disk is made to boot on this
machine (deploy_fixups: the chroot backend of the fixups library). Not in
this build yet (see docs/deploy.md): shrinking, growing LVM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from converters import (
    deploy_fixups,
    deploy_grow,
    deploy_report,
    deploy_shrink,
    deploy_uefi_layout,
    first_boot_report,
)
from converters.deploy_journal import DeployJournal
from converters.deploy_plan import (
    DeployError,
    DeployPlan,
    DeployRequest,
    check,
    target_disk,
)
from converters.deploy_source import (
    FileDisk,
    ImageInfo,
    ServerDisk,
    SourceError,
    disk_name,
    list_images,
    probe,
)
from converters.deploy_target import Target
from converters.deploy_write import WriteOptions, WriteStats, write_disk
from converters.events import EventStream
from converters.fixups.guest import FixupError
from converters.wire.errors import WireError
from converters.wire.pairing import Pairing

__all__ = [
    "DeployError",
    "DeployPlan",
    "DeployRequest",
    "DeployResult",
    "ImageInfo",
    "deploy",
    "list_images",
    "plan_deploy",
]


@dataclass
class DeployResult:
    plan: DeployPlan
    disks: list[WriteStats] = field(default_factory=list)
    fixups: deploy_fixups.FixupReport | None = None
    grown: list[deploy_grow.GrowReport] = field(default_factory=list)


def image_disks(image) -> dict[str, int]:
    """Image disk name -> virtual size, for a listed image or a file/URL."""
    if isinstance(image, ImageInfo):
        return dict(image.disks)
    try:
        _, size = probe(str(image))
    except SourceError as e:
        raise DeployError(str(e)) from None
    return {disk_name(str(image)): size}


def plan_deploy(request: DeployRequest) -> DeployPlan:
    """Raises DeployError (unconfirmed, too small, boot medium, read-only,
    in use) before anything is written."""
    sizes = image_disks(request.image)
    disks = {path: target_disk(path) for _, path in request.targets}
    return check(request, sizes, disks)


def _open_source(image, disk: str, size: int, events: EventStream):
    if isinstance(image, ImageInfo):
        return ServerDisk(
            Pairing.parse(image.server), image.name, disk, size, events=events
        )
    fmt, _ = probe(str(image))
    return FileDisk(str(image), fmt, size, disk)


def _needs_esp(image, disk, events: EventStream) -> bool:
    """Whether a UEFI machine's image disk must be given an EFI system
    partition (a BIOS image: converted to GPT + ESP after the write); one
    that cannot be is refused before any write."""
    source = _open_source(image, disk.image_disk, disk.image_size, events)
    try:
        head = source.read(0, min(1 << 20, disk.image_size))
    finally:
        source.close()
    try:
        return deploy_uefi_layout.needs_esp(
            head, disk.image_disk, disk.image_size, disk.target.size
        )
    except deploy_uefi_layout.LayoutError as e:
        raise DeployError(f"{e}: nothing was written") from None


def _write_journaled(source, path: str, events, options) -> WriteStats:
    """write_disk with a journal, so that running it again resumes."""
    journal = None
    try:
        with Target(path) as target:
            journal = DeployJournal.for_target(
                path,
                {
                    "image": source.identity,
                    "size": source.size,
                    "target": path,
                    "target_size": target.size,
                },
            )
            if journal.resumed_bytes:
                events.log(
                    f"{path}: resuming, {journal.resumed_bytes} "
                    "bytes were written by an earlier run"
                )
            stats = write_disk(
                source, target, events=events, options=options, journal=journal
            )
        journal.close(done=True)
        return stats
    finally:
        if journal is not None and not journal.closed:
            journal.close()


def _shrink_plan(image, disk, events: EventStream) -> deploy_shrink.ShrinkPlan:
    """The shrink of a smaller target, or DeployError before any
    write (deploy_shrink: ext2/3/4 only, used data must fit)."""
    source = _open_source(image, disk.image_disk, disk.image_size, events)
    try:
        shrink = deploy_shrink.plan(
            source, disk.image_disk, disk.target.path, disk.target.size
        )
    except DeployError as e:
        raise DeployError(
            f"{disk.target.name} is smaller than image disk {disk.image_disk} "
            f"and cannot take it shrunk: {e}: nothing was written"
        ) from None
    finally:
        source.close()
    return shrink


def _report_registrar(request: DeployRequest, hardware, events: EventStream):
    """What registers the deployed system's first-boot report with the
    server the image comes from; None when there is none to report to."""
    if not request.report:
        if isinstance(request.image, ImageInfo):
            events.log("first-boot report: off: the machine will not report")
        return None
    if not isinstance(request.image, ImageInfo):
        events.log(
            "first-boot report: off: the image is a file or URL, there is no "
            "ferry serve to report to"
        )
        return None
    pairing = Pairing.parse(request.image.server)
    image = request.image.name

    def register(hostname: str) -> first_boot_report.Credential:
        try:
            return deploy_report.register(pairing, hostname, image, hardware.macs)
        except (WireError, OSError, ValueError) as e:
            raise first_boot_report.NotArmed(
                f"ferry serve at {pairing.address} did not register it: {e}"
            ) from e

    return register


def deploy(
    request: DeployRequest,
    events: EventStream | None = None,
    options: WriteOptions | None = None,
) -> DeployResult:
    events = events or EventStream()
    plan = plan_deploy(request)
    shrinks = {
        disk.target.path: _shrink_plan(request.image, disk, events)
        for disk in plan.disks
        if disk.smaller
    }
    for line in plan.summary():
        events.log(line)
    for shrink in shrinks.values():
        for line in shrink.lines():
            events.log(line)
    result = DeployResult(plan)
    hardware = None
    add_esp = False
    if request.fixups and plan.disks:
        hardware = request.hardware or deploy_fixups.this_machine(
            plan.disks[0].target.path
        )
        if hardware.firmware == "uefi":
            add_esp = _needs_esp(request.image, plan.disks[0], events)
    for disk in plan.disks:
        try:
            source = _open_source(
                request.image, disk.image_disk, disk.image_size, events
            )
        except (SourceError, WireError, OSError) as e:
            raise DeployError(f"cannot read image disk {disk.image_disk}: {e}") from e
        try:
            if disk.target.path in shrinks:
                stats = deploy_shrink.write_shrunk(
                    source, shrinks[disk.target.path], events=events, options=options
                )
            else:
                stats = _write_journaled(source, disk.target.path, events, options)
        except (WireError, OSError) as e:
            raise DeployError(
                f"writing {disk.target.path} failed: {e}; the disk has no "
                "partition table until a deploy completes; run the same deploy "
                "again to resume"
            ) from e
        finally:
            source.close()
        result.disks.append(stats)
        events.log(
            f"{disk.target.path}: {stats.data_bytes} bytes written as data, "
            f"{stats.zeroed_bytes + stats.zero_detected} zeroed, "
            f"{stats.verified_bytes} verified by read-back, in {stats.seconds:.1f} s"
        )
        gets_esp = add_esp and disk is plan.disks[0]
        # A new ESP takes the end of the disk: the last partition grows up
        # to where it will start.
        keep_free = deploy_uefi_layout.ROOM if gets_esp else 0
        if disk.larger_by - keep_free >= deploy_grow.MIN_GROWTH and request.grow:
            events.step("grow", f"{disk.target.path}: last partition to the end")
            try:
                grown = deploy_grow.grow(disk.target.path, events, keep_free)
            except (deploy_grow.GrowError, FixupError) as e:
                raise DeployError(
                    f"{disk.target.path} was written and verified, but growing "
                    f"its last partition failed: {e}"
                ) from e
            if grown:
                result.grown.append(grown)
        if gets_esp:
            events.step(
                "uefi layout", f"{disk.target.path}: GPT + EFI system partition"
            )
            try:
                deploy_uefi_layout.add_esp(disk.target.path, events)
            except (deploy_uefi_layout.LayoutError, FixupError) as e:
                raise DeployError(
                    f"{disk.target.path} was written and verified, but giving it "
                    f"an EFI system partition failed: {e}"
                ) from e
    if request.fixups and plan.disks:
        first = plan.disks[0]
        events.step("fixups", f"{first.target.path} for this machine")
        try:
            result.fixups = deploy_fixups.fix(
                first.target.path,
                hardware,
                request.hostname,
                first.image_disk,
                events,
                tuple((d.target.path, d.image_disk) for d in plan.disks[1:]),
                _report_registrar(request, hardware, events),
            )
        except FixupError as e:
            raise DeployError(
                f"{first.target.path} was written and verified, but making it "
                f"boot on this machine failed: {e}"
            ) from e
    else:
        events.log("fixups skipped: the disks hold the image as it is", "warning")
    return result
