"""Live migration of a libvirt domain, ended by ferry's pre-copy policy
(precopy_policy.py): the libvirt backend of `ferry migrate --libvirt URI`.

libvirt runs the migration (peer to peer: the source's libvirtd talks to the
destination's, starts the QEMU there and streams into it); ferry watches and
steers it like the QMP engine does. `migrateToURI3` blocks until the end, so
it runs in a worker thread while this one reads `virDomainGetJobStats` every
~200 ms. A new `memory_iteration` (QEMU's dirty-sync count) ends a round;
migrate_rounds turns the totals into the policy's `Round`, and the decision
is applied with libvirt's controls where it has them:

- THROTTLE: libvirt sets auto-converge's parameters only when the migration
  starts, so ferry steers auto-converge (VIR_MIGRATE_AUTO_CONVERGE) through
  the QEMU monitor passthrough, with the same settings as the QMP engine;
- SWITCH_OVER: `migrateSetMaxDowntime` to QEMU's maximum, so QEMU's next
  convergence check passes;
- ABORT, a cancel, a timeout: `abortJob`; libvirt cancels the migration,
  kills the destination's QEMU and resumes the guest on the source.

Disks without shared storage: VIR_MIGRATE_NON_SHARED_DISK, libvirt's NBD
mirror into the destination's disks (which must exist, with the same sizes).
Offline: a migration without VIR_MIGRATE_LIVE, in which libvirt pauses the
guest, copies it once and starts it on the destination."""

from __future__ import annotations

import dataclasses
import threading
import time

import libvirt

from converters.events import EventStream
from converters.migrate_controls import FORCE_DOWNTIME_MS
from converters.migrate_endpoint import MigrationError
from converters.migrate_libvirt_controls import (
    job_stats,
    migrate_flags,
    migrate_params,
    monitor,
    saved_throttle,
    set_throttle,
)
from converters.migrate_qmp import MigrationOptions
from converters.migrate_report import MigrationReport, MigrationRound
from converters.migrate_rounds import RoundTracker
from converters.precopy_policy import Action, Decision, PrecopyPolicy

RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)


def open_domain(uri: str, name: str) -> tuple[libvirt.virConnect, libvirt.virDomain]:
    # libvirt prints every error on stderr by default; ferry reports its own.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise MigrationError(f"cannot reach libvirt at {uri}: {e}") from e
    try:
        return conn, conn.lookupByName(name)
    except libvirt.libvirtError as e:
        conn.close()
        raise MigrationError(f"no domain {name!r} at {uri}") from e


@dataclasses.dataclass
class _Saved:
    """The source's settings ferry changes; restored when it gives up."""

    downtime_ms: int
    speed: int  # MiB/s
    throttle: dict[str, int]


class LibvirtMigration:
    """One migration of domain `name` at `uri` to the libvirt at `dest_uri`
    (as the source's libvirtd reaches it). `run()` blocks and returns the
    report; `cancel()` (from any thread) gives it up at the next poll."""

    def __init__(
        self,
        uri: str,
        name: str,
        dest_uri: str,
        options: MigrationOptions,
        events: EventStream | None = None,
        offline: bool = False,
    ) -> None:
        self.uri, self.name, self.dest_uri = uri, name, dest_uri
        self.options, self.offline = options, offline
        self.events = events or EventStream()
        self.report: MigrationReport | None = None
        self.clock = time.monotonic
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def run(self) -> MigrationReport:
        conn, dom = open_domain(self.uri, self.name)
        try:
            return self._run(dom)
        finally:
            conn.close()

    def _run(self, dom: libvirt.virDomain) -> MigrationReport:
        o = self.options
        state = dom.state()[0]
        if state not in RUNNING:
            raise MigrationError(f"the domain {self.name} is not running")
        if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            raise MigrationError(f"the domain {self.name} already runs a job")
        self._warn_tcg(dom)
        memory = dom.info()[2] * 1024
        mode = "offline" if self.offline else "live"
        label = "offline" if self.offline else o.label
        self.report = report = MigrationReport("failed", label, memory, mode=mode)
        seed = o.policy == "seed" and not self.offline
        saved = _Saved(
            dom.migrateGetMaxDowntime(),
            dom.migrateGetMaxSpeed(),
            saved_throttle(dom) if seed else {},
        )
        copy = o.storage == "copy"
        flags = migrate_flags(not self.offline, copy, seed or o.auto_converge, seed)
        params = migrate_params(self.name, o.uri, o.bandwidth, o.nbd)
        worker = _Worker(self.uri, self.name, self.dest_uri, params, flags)
        what = "stop, copy once" if self.offline else f"policy {label}"
        route = f"{self.name}: {self.uri} -> {self.dest_uri}"
        self.events.step("migrate", f"{route}, {what}")
        try:
            if not self.offline:
                dom.migrateSetMaxDowntime(round(o.downtime * 1000))
            if seed:
                set_throttle(dom, 0)
            worker.start()
            self._follow(dom, worker, seed)
        except BaseException as e:  # noqa: B036 - on Ctrl-C too, keep the source
            report.status, report.reason = "failed", str(e) or type(e).__name__
            self._give_up(dom, worker, saved, state == libvirt.VIR_DOMAIN_RUNNING)
            if not isinstance(e, Exception):
                raise
            return report
        if worker.is_alive() or worker.error is not None:
            self._give_up(dom, worker, saved, state == libvirt.VIR_DOMAIN_RUNNING)
        else:
            self._completed(dom)
        return report

    def _follow(self, dom: libvirt.virDomain, worker: _Worker, seed: bool) -> None:
        o, report = self.options, self.report
        policy = PrecopyPolicy(o.policy_params(), report.memory)
        tracker: RoundTracker | None = None
        decided = False
        while worker.wait(o.poll):
            stats = job_stats(dom)
            now = self.clock()
            report.total_time = now - worker.started
            if stats is not None and stats.ram is not None:
                report.max_throttle = max(report.max_throttle, stats.throttle)
                report.ram_bytes = stats.ram["transferred"]
            if stats is not None and stats.disk is not None:
                report.disk_bytes = stats.disk.copied
            late = o.timeout is not None and report.total_time > o.timeout
            if self._cancelled or late:
                report.status = "cancelled"
                report.ended_by = "timeout" if late else "cancel"
                report.reason = (
                    f"not finished after {o.timeout:g} s" if late else "by request"
                )
                return
            if stats is None or not stats.active or stats.ram is None:
                continue
            if tracker is None:
                # The memory copy starts (after the disks' first pass).
                report.memory = stats.memory_total or report.memory
                report.disk_size = stats.disk.total if stats.disk else 0
                policy = PrecopyPolicy(policy.params, report.memory + report.disk_size)
                tracker = RoundTracker(report.memory, worker.started, stats.disk)
            if decided or self.offline:
                continue
            r = tracker.update(now, stats.ram, stats.disk)
            if r is None:
                continue
            d = policy.decide(r)
            event = MigrationRound.of(
                r, d, stats.throttle, stats.disk.remaining if stats.disk else 0
            )
            report.rounds.append(event)
            self.events.emit(event)
            if not seed:
                # QEMU decides alone; a fresh policy keeps judging rounds.
                if d.final:
                    policy = PrecopyPolicy(policy.params, policy.size)
                continue
            decided = d.final
            self._apply(dom, d)
            if d.action is Action.ABORT:
                return

    def _apply(self, dom: libvirt.virDomain, d: Decision) -> None:
        report = self.report
        if d.action is Action.THROTTLE:
            set_throttle(dom, d.throttle)
        elif d.action is Action.SWITCH_OVER:
            report.ended_by, report.reason = d.rule, d.reason
            dom.migrateSetMaxDowntime(FORCE_DOWNTIME_MS)
        elif d.action is Action.ABORT:
            report.status, report.ended_by, report.reason = "aborted", d.rule, d.reason

    def _completed(self, dom: libvirt.virDomain) -> None:
        report = self.report
        report.status = "completed"
        dconn = _open_quietly(self.dest_uri)
        ddom = _lookup_quietly(dconn, self.name)
        # libvirt keeps the completed job's statistics on the source's domain
        # while it stays defined, and hands them to the destination's in the
        # migration cookie.
        done = job_stats(dom, completed=True)
        if (done is None or not done.elapsed) and ddom is not None:
            done = job_stats(ddom, completed=True)
        if done is not None and done.elapsed:
            report.total_time = done.elapsed
            report.downtime = done.downtime
            if done.ram:
                report.ram_bytes = done.ram["transferred"]
            if done.disk:
                # libvirt 9.0 reports the mirrors' size but not always what
                # they copied once they ended; keep the last live reading.
                report.disk_size = done.disk.total
                report.disk_bytes = done.disk.copied or report.disk_bytes
        if self.offline:
            report.ended_by = "offline"
            # The guest was paused from the start to the end of the copy.
            report.downtime = report.total_time
        elif not report.ended_by:
            limit = round(self.options.downtime * 1000)
            report.ended_by = "qemu"
            report.reason = f"remaining / bandwidth <= downtime-limit {limit} ms"
        if ddom is not None:
            report.destination_running = ddom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        if dconn is not None:
            dconn.close()
        down = "-" if report.downtime is None else f"{report.downtime * 1000:.0f} ms"
        self.events.log(
            f"migration completed in {report.total_time:.1f} s, downtime {down}"
        )

    def _give_up(
        self, dom: libvirt.virDomain, worker: _Worker, saved: _Saved, was_running: bool
    ) -> None:
        """Abort the job, undo ferry's settings and leave the guest running
        on the source; libvirt resumes it itself when the abort catches it
        paused for the switch-over, and ferry covers the rest."""
        report = self.report
        if worker.is_alive():
            _quietly(dom.abortJob)
            worker.join(60)
        elif worker.ident is None:  # never started: close its connection
            _quietly(worker.conn.close)
        if worker.error is not None and report.status == "failed" and not report.reason:
            report.reason = worker.error.get_error_message()
        _quietly(dom.migrateSetMaxDowntime, saved.downtime_ms)
        _quietly(dom.migrateSetMaxSpeed, saved.speed)
        if saved.throttle:
            _quietly(monitor, dom, "migrate-set-parameters", saved.throttle)
        state = _quietly(dom.state)
        if was_running and state and state[0] == libvirt.VIR_DOMAIN_PAUSED:
            _quietly(dom.resume)
            state = _quietly(dom.state)
        report.source_running = bool(state) and state[0] == libvirt.VIR_DOMAIN_RUNNING
        where = "running" if report.source_running else "NOT running"
        self.events.log(
            f"migration {report.status}: {report.reason}; "
            f"the guest is {where} on the source",
            "warning",
        )

    def _warn_tcg(self, dom: libvirt.virDomain) -> None:
        """QEMU before 9.0 can lose guest writes when it migrates a TCG guest
        (QEMU commit 03bfc2188f; see tests/harness/migration_guest.py)."""
        try:
            version = dom.connect().getVersion()
            tcg = "type='qemu'" in dom.XMLDesc(0)
        except libvirt.libvirtError:
            return
        if tcg and version < 9_000_000:
            major, minor = version // 1_000_000, version // 1000 % 1000
            self.events.log(
                f"the source runs QEMU {major}.{minor} without KVM: QEMU before "
                "9.0 can lose guest writes while migrating a TCG guest "
                "(QEMU commit 03bfc2188f)",
                "warning",
            )


class _Worker(threading.Thread):
    """`migrateToURI3` in its own thread: it blocks until the migration ends.

    It gets its own connection: when two threads share one, libvirt's client
    lets the blocked call's thread do the other's socket I/O ("passing the
    buck"), and a monitor passthrough from the polling thread was seen here
    to wait forever for its reply in the middle of a migration."""

    def __init__(self, uri: str, name: str, dest_uri: str, params: dict, flags: int):
        super().__init__(daemon=True, name="ferry-libvirt-migrate")
        self.conn, self.dom = open_domain(uri, name)
        self.dest_uri, self.params, self.flags = dest_uri, params, flags
        self.error: libvirt.libvirtError | None = None
        self.started = time.monotonic()

    def run(self) -> None:
        try:
            self.dom.migrateToURI3(self.dest_uri, self.params, self.flags)
        except libvirt.libvirtError as e:
            self.error = e
        finally:
            _quietly(self.conn.close)

    def wait(self, poll: float) -> bool:
        """Wait up to `poll` s; True while the migration still runs."""
        self.join(poll)
        return self.is_alive()


def _quietly(call, *args):
    try:
        return call(*args)
    except libvirt.libvirtError:
        return None


def _open_quietly(uri: str) -> libvirt.virConnect | None:
    return _quietly(libvirt.open, uri)


def _lookup_quietly(conn, name: str) -> libvirt.virDomain | None:
    return None if conn is None else _quietly(conn.lookupByName, name)
