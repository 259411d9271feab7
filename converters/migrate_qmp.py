"""Live migration of a running QEMU guest, driven over QMP and ended by
ferry's pre-copy policy (precopy_policy.py).

QEMU does the copying; ferry watches it. Every ~200 ms, or at once on a
`MIGRATION_PASS` event, it reads `query-migrate`; migrate_rounds turns a new
dirty-bitmap sync into a `Round` for the policy, whose decision ferry applies
with QEMU's own controls:

- THROTTLE: QEMU 7.2 has no QMP command that sets the CPU throttle
  (dirty-limit came in 8.1), so ferry steers auto-converge
  (`throttle_parameters`);
- SWITCH_OVER: `downtime-limit` raised to QEMU's maximum, so QEMU's next
  convergence check passes and it stops the guest and sends the rest;
- ABORT (or a cancel, a timeout, an error): `migrate_cancel`; the guest keeps
  running on the source, and ferry resumes it there if it had stopped.

QEMU's own test (remaining / bandwidth <= `downtime-limit`, set to the
downtime target) stays armed: it is the policy's concentration rule, checked
by QEMU between rounds too. With `--policy qemu` ferry only watches.

Disks without shared storage are mirrored first (migrate_disks.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field

from qemu.qmp import QMPClient

from converters.events import EventStream
from converters.migrate_controls import (
    ACTIVE,
    FORCE_DOWNTIME_MS,
    capabilities,
    listen,
    resume,
    saved,
    stamp,
    throttle_parameters,
    warn_tcg,
)
from converters.migrate_disks import DiskMirror, quietly
from converters.migrate_endpoint import Endpoint, MigrationError, connect
from converters.migrate_report import MigrationReport, MigrationRound
from converters.migrate_rounds import RoundTracker
from converters.precopy_policy import Action, PolicyParams, PrecopyPolicy


@dataclass(frozen=True)
class MigrationOptions:
    uri: str  # where the source sends the stream: unix:/path or tcp:HOST:PORT
    listen: str | None = None  # destination's migrate-incoming URI; None: uri
    policy: str = "seed"  # seed (ferry's rules) or qemu (QEMU decides alone)
    auto_converge: bool = False  # with policy qemu: QEMU's own auto-converge
    downtime: float = 0.3  # seconds: target, and QEMU's downtime-limit
    max_downtime: float | None = None  # seconds: abort rather than pause longer
    bandwidth: int | None = None  # bytes/s: QEMU's max-bandwidth
    storage: str = "shared"  # shared, or copy: mirror the disks over NBD
    nbd: str | None = None  # destination NBD server: unix:/path, tcp:HOST:PORT
    mirror_speed: int | None = None  # bytes/s for the disk mirror
    poll: float = 0.2  # seconds between query-migrate polls
    timeout: float | None = None  # cancel after this many seconds
    ready_timeout: float = 3600.0  # seconds for the disks' first full pass

    @property
    def label(self) -> str:
        return self.policy + ("+auto-converge" if self.auto_converge else "")

    def policy_params(self) -> PolicyParams:
        return dataclasses.replace(
            PolicyParams.named(self.policy),
            downtime_target=self.downtime,
            max_downtime=self.max_downtime,
        )


@dataclass
class _Session:
    src: QMPClient
    dst: QMPClient
    report: MigrationReport
    was_running: bool
    saved: dict = field(default_factory=dict)
    mirror: DiskMirror | None = None


class QmpMigration:
    """One live migration. `run()` returns its report; `cancel()` (from any
    thread) gives it up at the next poll."""

    def __init__(
        self,
        source: Endpoint,
        dest: Endpoint,
        options: MigrationOptions,
        events: EventStream | None = None,
    ) -> None:
        self.source, self.dest, self.options = source, dest, options
        self.events = events or EventStream()
        self.report: MigrationReport | None = None
        self.clock = time.monotonic  # rounds' times and bandwidths
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    async def run(self) -> MigrationReport:
        src = await connect(self.source, "source")
        try:
            dst = await connect(self.dest, "destination")
            try:
                return await self._run(src, dst)
            finally:
                # A destination whose incoming migration failed has exited.
                await quietly(dst.disconnect())
        finally:
            await quietly(src.disconnect())

    async def _run(self, src: QMPClient, dst: QMPClient) -> MigrationReport:
        o = self.options
        state = await src.execute("query-status")
        if state["status"] not in ("running", "paused"):
            raise MigrationError(f"the source guest is {state['status']}")
        if (await dst.execute("query-status"))["status"] != "inmigrate":
            raise MigrationError(
                "the destination QEMU is not waiting for a migration: "
                "start it with -incoming defer"
            )
        if (await src.execute("query-migrate")).get("status") in ACTIVE:
            raise MigrationError("the source is already migrating")
        await warn_tcg(src, self.events)
        memory = (await src.execute("query-memory-size-summary"))["base-memory"]
        self.report = MigrationReport("failed", o.label, memory)
        s = _Session(src, dst, self.report, state["running"], await saved(src))
        await listen(dst, o.listen or o.uri, self.events)
        try:
            if o.storage == "copy":
                nbd = o.nbd or self.dest.default_nbd()
                s.mirror = DiskMirror(
                    src, dst, nbd, o.mirror_speed, o.policy == "seed", self.events
                )
                self.events.step("copy disks", f"NBD {nbd}")
                await s.mirror.start()
                s.report.disk_size = s.mirror.size
                await s.mirror.wait_ready(o.ready_timeout)
            await self._configure(src, s.mirror is not None)
            self.events.step("migrate", f"{self.source} -> {o.uri}, policy {o.label}")
            await src.execute("migrate", {"uri": o.uri})
            await self._follow(s)
        except BaseException as e:  # noqa: B036 - on Ctrl-C too, resume the source
            s.report.status, s.report.reason = "failed", str(e) or type(e).__name__
            await self._give_up(s)
            if not isinstance(e, Exception):
                raise
        return s.report

    async def _configure(self, src: QMPClient, disks: bool) -> None:
        o = self.options
        caps = {
            "events": True,
            "auto-converge": o.policy == "seed" or o.auto_converge,
            # Stop before the device state goes, so the disk mirrors can end
            # while the guest is paused (see migrate_disks).
            "pause-before-switchover": disks,
        }
        await src.execute("migrate-set-capabilities", capabilities(caps))
        params: dict[str, int] = {"downtime-limit": round(o.downtime * 1000)}
        if o.bandwidth:
            params["max-bandwidth"] = o.bandwidth
        if o.policy == "seed":
            params.update(throttle_parameters(0))
        await src.execute("migrate-set-parameters", params)

    async def _follow(self, s: _Session) -> None:
        o, report, src = self.options, s.report, s.src
        policy = PrecopyPolicy(o.policy_params(), report.memory + report.disk_size)
        start = self.clock()
        disk = await s.mirror.status() if s.mirror else None
        tracker = RoundTracker(report.memory, start, disk)
        decided = mirrored = False
        names = ("MIGRATION_PASS", "MIGRATION", "STOP")
        with src.listener(names) as listener, s.dst.listener("RESUME") as resumed:
            while True:
                try:
                    async with asyncio.timeout(o.poll):
                        await listener.get()
                except TimeoutError:
                    pass
                listener.clear()
                info = await src.execute("query-migrate")
                status, ram = info.get("status", "none"), info.get("ram")
                now = self.clock()
                report.total_time = now - start
                report.ram_bytes = ram["transferred"] if ram else report.ram_bytes
                throttle = info.get("cpu-throttle-percentage", 0)
                report.max_throttle = max(report.max_throttle, throttle)
                if status == "completed":
                    return await self._completed(s, info, listener, resumed)
                if status in ("failed", "cancelled"):
                    report.reason = info.get("error-desc", f"QEMU reports {status}")
                    return await self._give_up(s)
                if status == "pre-switchover":
                    if s.mirror and not mirrored:
                        mirrored = True
                        report.disk_bytes = (await s.mirror.complete()).copied
                        took = (self.clock() - now) * 1000
                        self.events.log(f"disks in sync after {took:.0f} ms paused")
                    await src.execute("migrate-continue", {"state": "pre-switchover"})
                    continue
                late = o.timeout is not None and report.total_time > o.timeout
                if self._cancelled or late:
                    report.status = "cancelled"
                    report.ended_by = "timeout" if late else "cancel"
                    report.reason = (
                        f"not finished after {o.timeout:g} s" if late else "by request"
                    )
                    return await self._give_up(s)
                if status != "active" or not ram or decided:
                    continue
                disk = await s.mirror.status() if s.mirror and not mirrored else None
                r = tracker.update(now, ram, disk)
                if r is None:
                    continue
                d = policy.decide(r)
                event = MigrationRound.of(r, d, throttle, disk.remaining if disk else 0)
                report.rounds.append(event)
                self.events.emit(event)
                if o.policy != "seed":
                    # QEMU decides alone; a fresh policy keeps judging rounds.
                    if d.final:
                        policy = PrecopyPolicy(policy.params, policy.size)
                    continue
                decided = d.final
                await self._apply(s, d)
                if d.action is Action.ABORT:
                    return await self._give_up(s)

    async def _apply(self, s: _Session, d) -> None:
        if d.action is Action.THROTTLE:
            await s.src.execute(
                "migrate-set-parameters", throttle_parameters(d.throttle)
            )
        elif d.action is Action.SWITCH_OVER:
            s.report.ended_by, s.report.reason = d.rule, d.reason
            limit = {"downtime-limit": FORCE_DOWNTIME_MS}
            await s.src.execute("migrate-set-parameters", limit)
        elif d.action is Action.ABORT:
            s.report.status, s.report.ended_by, s.report.reason = (
                "aborted",
                d.rule,
                d.reason,
            )

    async def _completed(self, s: _Session, info: dict, stopped, resumed) -> None:
        report = s.report
        report.status = "completed"
        # QEMU sets "completed" a moment before it fills in the times
        # (migration_calculate_complete runs after migrate_set_state).
        for _ in range(50):
            if info.get("total-time"):
                break
            await asyncio.sleep(0.02)
            info = await s.src.execute("query-migrate")
        report.total_time = info.get("total-time", 0) / 1000
        # QEMU's measure: from stopping the guest on the source to the end of
        # the stream (migration_completion).
        report.downtime = info.get("downtime", 0) / 1000
        report.ram_bytes = info.get("ram", {}).get("transferred", report.ram_bytes)
        if not report.ended_by:
            limit = round(self.options.downtime * 1000)
            report.ended_by = "qemu"
            report.reason = f"remaining / bandwidth <= downtime-limit {limit} ms"
        report.destination_running = await resume(s.dst, s.was_running)
        stops = [e for e in stopped.history if e["event"] == "STOP"]
        if stops and resumed.history and self.source.local and self.dest.local:
            # Both QEMUs stamp events with the same host clock: the guest's
            # pause as it lived it, the destination's start included.
            report.downtime_observed = stamp(resumed.history[0]) - stamp(stops[0])
        if s.mirror:
            await s.mirror.cleanup()
        if report.destination_running is False:
            # The guest runs nowhere: bring it back where it was.
            report.status, report.reason = "failed", "the destination did not start"
            await quietly(s.dst.execute("stop"))
            await self._give_up(s)
            return
        down = report.downtime * 1000
        self.events.log(
            f"migration completed in {report.total_time:.1f} s, downtime {down:.0f} ms"
        )

    async def _give_up(self, s: _Session) -> None:
        """Cancel, undo ferry's settings and leave the guest running on the
        source. QEMU restarts the guest itself when a cancel catches it
        stopped for the switch-over; `cont` covers the rest."""
        src = s.src
        await quietly(src.execute("migrate_cancel"))
        for _ in range(300):
            info = await quietly(src.execute("query-migrate"), {})
            if info.get("status") not in ACTIVE:
                break
            await asyncio.sleep(0.1)
        if s.mirror:
            await s.mirror.abort()
        if s.saved:
            await quietly(src.execute("migrate-set-parameters", s.saved["params"]))
            caps = capabilities(s.saved["caps"])
            await quietly(src.execute("migrate-set-capabilities", caps))
        state = await quietly(src.execute("query-status"), {})
        if s.was_running and not state.get("running"):
            await quietly(src.execute("cont"))
            state = await quietly(src.execute("query-status"), {})
        s.report.source_running = bool(state.get("running"))
        where = "running" if s.report.source_running else "NOT running"
        self.events.log(
            f"migration {s.report.status}: {s.report.reason}; "
            f"the guest is {where} on the source",
            "warning",
        )


def migrate(
    source: Endpoint,
    dest: Endpoint,
    options: MigrationOptions,
    events: EventStream | None = None,
) -> MigrationReport:
    """Run one live migration to its end (blocking)."""
    return asyncio.run(QmpMigration(source, dest, options, events).run())
