"""Live P2V: capture the disks of a running Linux machine with disk pre-copy
and a short freeze (docs/live-capture.md).

Round 1 sends each disk's map (``live_map``) while a write tracker records
every completed write; each later round sends the blocks written during the
round before. After each round the pre-copy policy (the one memory
migration uses) decides: another round, a tighter writer limit, or the
switch-over. Then every read-write filesystem on the captured disks is
frozen, the tracker's last dirty set is taken (complete: the freeze has
drained every write), the maps are recomputed exactly (``frozen_map``), and
what the exact map calls used and no round has sent clean since is read;
the filesystems thaw, the read blocks are sent and flushed, the session's
maps are replaced by the exact ones and the disks are declared complete.

``clean`` per disk is what the server holds that still equals the source:
every range a round sent, less every range written since. It is what makes
a stale first map and late events harmless.

A capture that fails or is killed leaves an incomplete session; run it
again with the same name: round 1 sends everything again (what the server
has may have changed on the source meanwhile, untracked).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field

from converters import inventory
from converters.capture import CaptureError, rw_mounts, select_disks
from converters.events import Event, EventStream
from converters.extents import ExtentKind, ExtentMap
from converters.fsfreeze import DEFAULT_TIMEOUT, FreezeGuard
from converters.live_capture_limit import WriterLimit
from converters.live_capture_map import LiveMap, frozen_first, frozen_map, live_map
from converters.live_capture_send import (
    MAX_SNAPSHOT,
    RoundSender,
    RoundStats,
    chunks,
    snapshot,
)
from converters.precopy_policy import Action, PolicyParams, PrecopyPolicy, Round
from converters.wire.connection import WireClient
from converters.wire.pairing import Pairing
from converters.wire.protocol import valid_name
from converters.wire.ranges import RangeSet
from converters.wire.retry import retry_call
from converters.write_tracker import DirtySet, WriteTracker, disk_of


@dataclass(frozen=True)
class LiveRoundDone(Event):
    number: int
    bytes_sent: int
    bytes_dirtied: int
    seconds: float
    action: str  # the policy's, or "write-back" for the round after sync


@dataclass(frozen=True)
class LiveFrozen(Event):
    """Emitted while frozen, after the final round's reads: listeners run
    synchronously, so a test may look at the sources in their frozen state
    (nothing on them may be written meanwhile)."""

    paths: dict[str, str]
    maps: dict[str, ExtentMap]


@dataclass(frozen=True)
class LiveCaptureDone(Event):
    rounds: int
    freeze_seconds: float
    total_seconds: float
    final_bytes: int


@dataclass
class LiveRequest:
    server: str  # pairing string
    disks: list[str] | None = None  # names or paths; None: every fixed disk
    name: str | None = None
    compress: str = "auto"
    bandwidth: float | None = None
    include_loop: bool = False
    policy: PolicyParams = field(default_factory=PolicyParams.seed)
    writer_cgroup: str | None = None
    writer_limit: float | None = None  # bytes/s for the writer's cgroup
    freeze_timeout: float = DEFAULT_TIMEOUT


@dataclass
class RoundReport:
    number: int
    bytes_sent: int
    bytes_dirtied: int
    seconds: float
    decision: str


@dataclass
class LiveResult:
    session: str
    rounds: list[RoundReport] = field(default_factory=list)
    final_bytes: int = 0  # sent after the freeze
    freeze_seconds: float = 0.0  # writes waited this long
    map_freeze_seconds: float = 0.0  # a brief freeze for the first map
    total_seconds: float = 0.0
    maps: dict[str, ExtentMap] = field(default_factory=dict)  # the exact ones


def sendable(emap: ExtentMap) -> RangeSet:
    out = RangeSet()
    for e in emap:
        if e.kind is not ExtentKind.SKIP:
            out.add(e.offset, e.end)
    return out


def layout(m: LiveMap) -> str:
    """Each partition (or the whole disk) and how its used blocks were found."""
    return "; ".join(
        f"{r.what} {r.fs_type or '-'} by {r.method}"
        + (f" ({r.reason})" if r.reason else "")
        for r in m.report.regions
    )


def minus(ranges: RangeSet, other: RangeSet) -> RangeSet:
    out = ranges.copy()
    for start, end in other:
        out.discard(start, end)
    return out


def live_capture(request: LiveRequest, events: EventStream) -> LiveResult:
    started = time.monotonic()
    pairing = Pairing.parse(request.server)
    events.step("inventory", "disks, NICs, firmware")
    machine = inventory.machine(include_loop=request.include_loop)
    disks = select_disks(machine, request.disks)
    session = request.name or machine.hostname or "capture"
    if not valid_name(session):
        raise CaptureError(
            f"{session!r} is not a valid session name: use letters, digits, "
            "'.', '_' and '-', at most 64"
        )
    paths = {d.name: d.path for d in disks}
    mounts = sorted({m for d in disks for m in rw_mounts(d)})
    tracked = [disk_of(d.path) for d in disks]
    events.log(
        f"live capture of {', '.join(paths)}; filesystems to freeze at the end: "
        f"{', '.join(mounts) or 'none'}"
    )
    result = LiveResult(session)
    with contextlib.ExitStack() as stack:
        limit = None
        if request.writer_cgroup:
            devnos = [n for t in tracked for n in t.devnos[:1]]
            base = request.writer_limit or float(1 << 40)
            limit = WriterLimit(request.writer_cgroup, devnos, base)
            limit.check()
            stack.callback(limit.lift)
        # The watchdog starts first: it is ready before anything is frozen.
        guard = stack.enter_context(FreezeGuard(mounts, request.freeze_timeout))
        events.step("track", "block-layer write events of the captured disks")
        tracker = stack.enter_context(WriteTracker(tracked))
        events.step("map", "used blocks of the running filesystems")
        # Written-back data is allocated on disk, so the map sends it in
        # round 1; left in the page cache it would wait for the freeze.
        sync_filesystems(mounts)
        first = {name: live_map(path) for name, path in paths.items()}
        for name, m in first.items():
            events.log(f"{name} mapped: {layout(m)}")
        if any(m.unmapped for m in first.values()):
            # partclone cannot read a busy ext4 ("Couldn't find valid
            # filesystem bitmap": the bitmaps on disk lag the journal):
            # map under a brief freeze rather than send it whole.
            guard.freeze()
            try:
                first = {n: frozen_first(p, first[n]) for n, p in paths.items()}
            finally:
                guard.thaw()
            result.map_freeze_seconds = guard.times.seconds
            events.log(f"mapped frozen in {result.map_freeze_seconds:.3f} s")
        maps = {name: m.map for name, m in first.items()}
        if limit is not None and request.writer_limit:
            # from here, while copying: a freeze for the first map would
            # wait for the writer's throttled writes in flight
            limit.apply(0)
            events.log(f"writer limited to {limit.current} B/s")
        client = WireClient(pairing)
        stack.callback(client.close)

        def retry(func):
            return retry_call(func, 600.0, events)

        events.step("session", f"{session} on {pairing.address}")
        retry(lambda: client.open_session(session, machine.to_json(), maps))
        sender = RoundSender(
            pairing,
            session,
            paths,
            compress=request.compress,
            bandwidth=request.bandwidth,
            events=events,
        )
        engine = _Rounds(request, sender, tracker, limit, events, started)
        engine.mounts = mounts
        clean = engine.precopy({n: sendable(m) for n, m in maps.items()}, result)
        engine.final(guard, paths, first, clean, result)
        sender.flush()
        # The exact maps replace the first ones: what they call used is
        # committed, so the server can check each disk complete.
        retry(lambda: client.open_session(session, {}, result.maps))
        for name in paths:
            retry(lambda n=name: client.complete(session, n))
    result.total_seconds = time.monotonic() - started
    events.emit(
        LiveCaptureDone(
            len(result.rounds),
            result.freeze_seconds,
            result.total_seconds,
            result.final_bytes,
        )
    )
    return result


class _Rounds:
    def __init__(self, request, sender, tracker, limit, events, started):
        self.request = request
        self.sender: RoundSender = sender
        self.tracker: WriteTracker = tracker
        self.limit: WriterLimit | None = limit
        self.events: EventStream = events
        self.started = started
        self.bandwidth = 0.0
        self.dirty_rate = 0.0
        self.sizes = {n: t.size for n, t in tracker.disks.items()}

    def precopy(self, first: dict[str, RangeSet], result: LiveResult):
        size = sum(t.size for t in self.tracker.disks.values())
        policy = PrecopyPolicy(self.request.policy, size)
        clean = {name: RangeSet() for name in first}
        todo = first
        for number in range(1, 1 << 30):
            stats, dirty = self._round(number, todo, clean)
            dirtied = _total(dirty)
            self.bandwidth = stats.bandwidth or self.bandwidth
            if stats.seconds > 0:
                self.dirty_rate = dirtied / stats.seconds
            elapsed = time.monotonic() - self.started
            decision = policy.decide(
                Round(number, stats.bytes, dirtied, dirtied, self.bandwidth, elapsed)
            )
            self.events.log(f"round {number}: {decision.reason}")
            self._report(number, stats, dirtied, decision.action.value, result)
            if decision.action is Action.THROTTLE:
                self._throttle(decision.throttle)
            if decision.action is Action.ABORT:
                raise CaptureError(f"pre-copy gave up: {decision.reason}")
            if decision.final:
                break
            todo = dirty
        # The freeze writes back every dirty page first, and the writers
        # wait for that too: write back now, while they run, and send what
        # that wrote in one more round. What it leaves dirty stays out of
        # `clean` for the final round.
        sync_filesystems(self.mounts)
        todo = _union(dirty, self._dirty(clean))
        stats, dirty = self._round(number + 1, todo, clean)
        self._report(number + 1, stats, _total(dirty), "write-back", result)
        return clean

    def _round(self, number, todo, clean):
        """Send `todo`; it is clean but for what was written meanwhile,
        which is returned."""
        self.events.step("round", f"{number}: {_mib(_total(todo))} MiB")
        stats = self.sender.send(chunks(todo, self.sizes))
        for name, ranges in todo.items():
            clean[name].update(ranges)
        return stats, self._dirty(clean)

    def final(self, guard: FreezeGuard, paths, first, clean, result) -> None:
        self.events.step("freeze", ", ".join(guard.mountpoints) or "nothing mounted")
        work = None
        if self.limit is not None:
            # A freeze waits for writes in flight and writes back dirty
            # pages; under io.max the writer's would drain at the limited
            # rate, and the freeze would last that long.
            self.limit.lift()
            self.events.log("writer limit lifted for the freeze")
        guard.freeze()
        try:
            t0 = time.monotonic()
            self._dirty(clean)  # complete: the freeze drained every write
            t1 = time.monotonic()
            result.maps = {n: frozen_map(p, first[n]) for n, p in paths.items()}
            t2 = time.monotonic()
            final = {n: minus(sendable(m), clean[n]) for n, m in result.maps.items()}
            result.final_bytes = _total(final)
            if result.final_bytes <= MAX_SNAPSHOT:
                work = snapshot(paths, final, self.sizes)
            else:  # too big to hold: send it frozen
                self.sender.send(chunks(final, self.sizes))
            t3 = time.monotonic()
            self.events.log(
                f"frozen: last writes {t1 - t0:.3f} s, exact maps {t2 - t1:.3f} s, "
                f"final reads {t3 - t2:.3f} s"
            )
            self.events.emit(LiveFrozen(dict(paths), dict(result.maps)))
        except BaseException:
            guard.close()  # thaws
            raise
        guard.thaw()
        result.freeze_seconds = guard.times.seconds
        self.events.log(
            f"frozen {result.freeze_seconds:.3f} s; "
            f"{_mib(result.final_bytes)} MiB read for the final round"
        )
        if work is not None:
            self.sender.send(work)

    def _dirty(self, clean: dict[str, RangeSet]) -> dict[str, RangeSet]:
        """The tracker's sets since the last call, taken out of `clean`."""
        swapped: dict[str, DirtySet] = self.tracker.swap()
        out = {}
        for name, ds in swapped.items():
            if ds.lost:  # the kernel dropped events: nothing is known clean
                self.events.log(f"{name}: write events lost; resending", "warning")
                clean[name] = RangeSet()
                out[name] = RangeSet([(0, self.tracker.disks[name].size)])
                continue
            for start, end in ds.ranges:
                clean[name].discard(start, end)
            out[name] = ds.ranges
        return out

    def _throttle(self, percent: int) -> None:
        if self.limit is None:
            self.events.log(
                f"the dirty set is not shrinking; a writer limit would help "
                f"(--writer-cgroup), throttle {percent}% advised",
                "warning",
            )
            return
        if not self.request.writer_limit and self.dirty_rate > 0:
            # no limit given: throttle relative to the rate measured
            self.limit.base = self.dirty_rate
        self.limit.apply(percent)
        self.events.log(f"writer limited to {self.limit.current} B/s")

    def _report(self, number, stats: RoundStats, dirtied, action, result) -> None:
        result.rounds.append(
            RoundReport(number, stats.bytes, dirtied, stats.seconds, action)
        )
        self.events.emit(
            LiveRoundDone(
                number,
                stats.bytes,
                dirtied,
                stats.seconds,
                action,
            )
        )
        self.events.log(
            f"round {number}: {_mib(stats.bytes)} MiB sent in {stats.seconds:.2f} s, "
            f"{_mib(dirtied)} MiB written meanwhile: {action}"
        )


def sync_filesystems(mounts: list[str]) -> None:
    """syncfs(2) of each mount point (`sync -f`)."""
    for mount in mounts:
        subprocess.run(["sync", "-f", mount], check=False, capture_output=True)


def _union(a: dict[str, RangeSet], b: dict[str, RangeSet]) -> dict[str, RangeSet]:
    return {name: a[name].union(b[name]) for name in a}


def _total(ranges: dict[str, RangeSet]) -> int:
    return sum(r.total for r in ranges.values())


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"
