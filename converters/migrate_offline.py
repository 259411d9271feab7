"""Offline (static) migration: stop the guest, copy its
memory and (without shared storage) its disks once, start it on the
destination. No pre-copy rounds and no dirty pages: every byte crosses once,
and the guest is down for the whole copy. That downtime, from `stop` on the
source to the destination running, is what this reports.

It uses the same QEMU machinery as the live engine: the disk mirror into the
destination's NBD export (which finds nothing dirty on a stopped guest, so it
is one full copy), then `migrate` of the stopped guest, which sends its
memory in one pass. A destination loaded from a stopped guest stays paused
(QEMU migrates the run state), so ferry resumes it with `cont`."""

from __future__ import annotations

import asyncio
import time

from qemu.qmp import QMPClient

from converters.events import EventStream
from converters.migrate_controls import ACTIVE, capabilities, listen, resume, saved
from converters.migrate_disks import DiskMirror, quietly
from converters.migrate_endpoint import Endpoint, MigrationError, connect
from converters.migrate_qmp import MigrationOptions
from converters.migrate_report import MigrationReport


async def run_offline(
    source: Endpoint,
    dest: Endpoint,
    options: MigrationOptions,
    events: EventStream | None = None,
) -> MigrationReport:
    events = events or EventStream()
    src = await connect(source, "source")
    try:
        dst = await connect(dest, "destination")
        try:
            return await _offline(src, dst, dest, options, events)
        finally:
            await quietly(dst.disconnect())
    finally:
        await quietly(src.disconnect())


async def _offline(
    src: QMPClient,
    dst: QMPClient,
    dest: Endpoint,
    o: MigrationOptions,
    events: EventStream,
) -> MigrationReport:
    state = await src.execute("query-status")
    if state["status"] not in ("running", "paused"):
        raise MigrationError(f"the source guest is {state['status']}")
    if (await dst.execute("query-status"))["status"] != "inmigrate":
        raise MigrationError(
            "the destination QEMU is not waiting for a migration: "
            "start it with -incoming defer"
        )
    memory = (await src.execute("query-memory-size-summary"))["base-memory"]
    report = MigrationReport("failed", "offline", memory, mode="offline")
    settings = await saved(src)
    await listen(dst, o.listen or o.uri, events)
    mirror = None
    events.step("stop", "the guest is paused until it runs on the destination")
    start = time.monotonic()
    await src.execute("stop")
    try:
        if o.storage == "copy":
            nbd = o.nbd or dest.default_nbd()
            mirror = DiskMirror(src, dst, nbd, o.mirror_speed, events=events)
            events.step("copy disks", f"NBD {nbd}")
            await mirror.start()
            report.disk_size = mirror.size
            await mirror.wait_ready(o.ready_timeout)
            report.disk_bytes = (await mirror.complete()).copied
        await src.execute("migrate-set-capabilities", capabilities({"events": True}))
        if o.bandwidth:
            await src.execute("migrate-set-parameters", {"max-bandwidth": o.bandwidth})
        events.step("copy memory", f"{memory} bytes to {o.uri}")
        await src.execute("migrate", {"uri": o.uri})
        info = await _wait(src, o.poll, start, o.timeout)
        if info.get("status") != "completed":
            raise MigrationError(info.get("error-desc", f"migration {info}"))
        report.ram_bytes = info.get("ram", {}).get("transferred", 0)
        report.destination_running = await resume(dst, state["running"])
        if not report.destination_running:
            raise MigrationError("the destination did not start")
        report.status, report.ended_by = "completed", "offline"
        report.downtime = report.total_time = time.monotonic() - start
        if mirror:
            await mirror.cleanup()
        events.log(f"offline migration done; downtime {report.downtime:.1f} s")
    except BaseException as e:  # noqa: B036 - on Ctrl-C too, resume the source
        report.status, report.reason = "failed", str(e) or type(e).__name__
        report.total_time = time.monotonic() - start
        await quietly(dst.execute("stop"))
        await quietly(src.execute("migrate_cancel"))
        for _ in range(300):
            info = await quietly(src.execute("query-migrate"), {})
            if info.get("status") not in ACTIVE:
                break
            await asyncio.sleep(0.1)
        if mirror:
            await mirror.abort()
        await quietly(src.execute("migrate-set-parameters", settings["params"]))
        await quietly(
            src.execute("migrate-set-capabilities", capabilities(settings["caps"]))
        )
        if state["running"]:
            await quietly(src.execute("cont"))
        now = await quietly(src.execute("query-status"), {})
        report.source_running = bool(now.get("running"))
        if not isinstance(e, Exception):
            raise
    return report


async def _wait(src: QMPClient, poll: float, start: float, timeout: float | None):
    while True:
        info = await src.execute("query-migrate")
        if info.get("status") not in ACTIVE:
            return info
        if timeout is not None and time.monotonic() - start > timeout:
            raise MigrationError(f"not finished after {timeout:g} s")
        await asyncio.sleep(poll)


def migrate_offline(
    source: Endpoint,
    dest: Endpoint,
    options: MigrationOptions,
    events: EventStream | None = None,
) -> MigrationReport:
    """Run one offline migration to its end (blocking)."""
    return asyncio.run(run_offline(source, dest, options, events))
