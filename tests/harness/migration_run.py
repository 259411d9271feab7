"""Migrations of the test guest, start to finish, as the integration tests
and the benchmark both need them: boot a guest with a writer, then hop it to
fresh `-incoming defer` destinations with the same hardware, each hop over a
slow link (migration_link) with one engine and policy, letting the guest run
a few seconds after each hop wherever it ended up. Hopping one guest saves a
boot per comparison and compares policies on the same guest. A QEMU is
ended by its pid as soon as the guest left it: never more than two run."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from converters.events import EventStream
from converters.migrate_endpoint import Endpoint
from converters.migrate_offline import run_offline
from converters.migrate_qmp import MigrationOptions, QmpMigration
from converters.migrate_report import MigrationReport, MigrationRound
from tests.harness.migration_guest import Guest, Progress, Writer, make_disk
from tests.harness.migration_link import Link

MiB = 1 << 20
# The link: 32 MiB/s, a quarter of a gigabit. With ~100 MiB of guest data
# the first pass takes ~3 s, so the writers below behave as they would on
# a real link with a real guest: idle and moderate (8 MB/s, a quarter of the
# link) converge; hostile (CPU-bound at 128 MB/s, four times the link) does
# not without a throttle.
LINK = 32 * MiB
WORKLOADS = {
    "idle": Writer(mb=48, mbps=0),
    "moderate": Writer(mb=48, mbps=8),
    "hostile": Writer(mb=48, mbps=128, cpu=True),
    "storage": Writer(mb=32, mbps=4, disk_mb=16, disk_mbps=2, verify=2),
}
DISK_MB = 64


@dataclass
class Outcome:
    """One hop: the engine's report and the writer's progress lines."""

    report: MigrationReport
    before: list[Progress]  # on the source before the hop (or the baseline)
    during: list[Progress]  # on the source while it ran
    after: list[Progress]  # where the guest ran after it
    source_console: str
    dest_console: str
    source_alive: bool  # the QEMU processes when the hop ended
    dest_alive: bool
    rounds: list[MigrationRound] = field(default_factory=list)

    @property
    def slowdown(self) -> float | None:
        """How much the writer's page rate fell while migrating."""
        base = [p.rate for p in self.before[-3:]]
        now = [p.rate for p in self.during]
        if not base or not now or sum(base) == 0:
            return None
        return 1 - (sum(now) / len(now)) / (sum(base) / len(base))


class GuestSession:
    """One guest, booted once, hopped from QEMU to QEMU."""

    def __init__(self, workdir: Path, writer: Writer, storage: bool = False):
        self.workdir, self.writer, self.storage = workdir, writer, storage
        self.hops = 0
        self.current: Guest | None = None

    def _guest(self, incoming: bool) -> Guest:
        name = f"g{self.hops + int(incoming)}"
        disk = (
            make_disk(self.workdir / f"{name}.qcow2", DISK_MB) if self.storage else None
        )
        return Guest(self.workdir, name, self.writer, disk=disk, incoming=incoming)

    def start(self) -> GuestSession:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.current = self._guest(incoming=False).start()
        if not self.current.wait_for(r"FERRY-WRITER t=", 90, count=2):
            raise RuntimeError(
                f"the test guest did not start:\n{self.current.console()}"
            )
        return self

    def hop(
        self,
        policy: str = "seed",
        auto_converge: bool = False,
        timeout: float | None = None,
        offline: bool = False,
        settle: int = 2,
        cancel_after: float | None = None,
        kill_dest_after: float | None = None,
        baseline: int = 0,
    ) -> Outcome:
        """Migrate the guest to a new QEMU; with `baseline`, first wait
        for that many fresh progress lines to measure the writer's rate."""
        src = self.current
        seen = len(src.progress())
        src.wait_for(r"FERRY-WRITER t=", 10 + 2 * baseline, count=seen + baseline)
        dst = self._guest(incoming=True).start()
        incoming = self.workdir / f"in{self.hops}.sock"
        with Link(self.workdir / f"link{self.hops}.sock", incoming, LINK) as link:
            options = MigrationOptions(
                uri=link.uri,
                listen=f"unix:{incoming}",
                policy=policy,
                auto_converge=auto_converge,
                bandwidth=LINK,
                storage="copy" if self.storage else "shared",
                mirror_speed=LINK if self.storage else None,
                timeout=timeout,
            )
            rounds: list[MigrationRound] = []
            events = EventStream()
            events.subscribe(
                lambda e: isinstance(e, MigrationRound) and rounds.append(e)
            )
            before = src.progress()
            baseline_lines = before[seen:] if baseline else before
            report = _run(
                src, dst, options, events, offline, cancel_after, kill_dest_after
            )
            during = src.progress()[len(before) :]
        # Let the guest show `settle` progress lines wherever it runs now;
        # a host loaded by other work can starve it, so wait for lines, not
        # for a fixed time.
        where = dst if report.completed else src
        shown = len(where.progress())
        where.wait_for(r"FERRY-WRITER t=", 30 + 10 * settle, count=shown + settle)
        if report.completed:
            after = dst.progress()
        else:
            after = src.progress()[len(before) + len(during) :]
        outcome = Outcome(
            report,
            baseline_lines,
            during,
            after,
            src.console(),
            dst.console(),
            src.alive(),
            dst.alive(),
            rounds,
        )
        (src if report.completed else dst).stop()
        self.hops += 1
        if report.completed:
            self.current = dst
        return outcome

    def close(self) -> None:
        if self.current:
            self.current.stop()

    def __enter__(self) -> GuestSession:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _run(src, dst, options, events, offline, cancel_after, kill_dest_after):
    """Run the engine in a thread so this one can cancel it or kill the
    destination on cue."""
    source, dest = Endpoint(str(src.qmp_path)), Endpoint(str(dst.qmp_path))
    engine = QmpMigration(source, dest, options, events)
    result: list = []

    def work() -> None:
        coro = run_offline(source, dest, options, events) if offline else engine.run()
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            result.append(e)

    thread = threading.Thread(target=work, daemon=True)
    start = time.monotonic()
    thread.start()
    while thread.is_alive():
        elapsed = time.monotonic() - start
        if cancel_after is not None and elapsed > cancel_after:
            engine.cancel()
        if kill_dest_after is not None and elapsed > kill_dest_after:
            dst.stop()
        thread.join(0.1)
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]
