"""The live engine against scripted QEMUs: which QMP commands each policy
decision turns into, and that every way a migration can end short of
completion resumes the guest on the source and restores its settings."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from converters.migrate_controls import FORCE_DOWNTIME_MS, throttle_parameters
from converters.migrate_endpoint import Endpoint, MigrationError
from converters.migrate_qmp import MigrationOptions, QmpMigration

MiB = 1 << 20
MEMORY = 256 * MiB
DEFAULTS = {
    "downtime-limit": 300,
    "max-bandwidth": 134217728,
    "throttle-trigger-threshold": 50,
    "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10,
    "max-cpu-throttle": 99,
}


class Listener:
    history: tuple = ()

    async def get(self):
        await asyncio.sleep(3600)  # no events: the engine polls

    def clear(self):
        return []


class FakeQemu:
    """Answers the QMP commands the engines send; `infos` is what
    query-migrate returns, one per call after `migrate`, the last repeated."""

    def __init__(self, status: str, infos: list[dict] | None = None) -> None:
        self.status, self.infos = status, list(infos or [])
        self.calls: list[tuple[str, dict | None]] = []
        self.migrating = False
        self.now = 0.0  # the engine's clock: a reading every 1.5 s
        self.peer: FakeQemu | None = None  # the destination, started on completion

    def sent(self, command: str) -> list[dict | None]:
        return [args for c, args in self.calls if c == command]

    @contextlib.contextmanager
    def listener(self, names=()):
        yield Listener()

    async def disconnect(self) -> None:
        pass

    async def execute(self, cmd: str, args: dict | None = None):
        self.calls.append((cmd, args))
        if cmd == "query-status":
            return {"status": self.status, "running": self.status == "running"}
        if cmd == "query-migrate":
            if not self.migrating:
                return {}
            info = self.infos.pop(0) if len(self.infos) > 1 else self.infos[0]
            self.now += 1.5
            if info.get("status") == "completed":
                self.status = "postmigrate"
                if self.peer and self.peer.status == "inmigrate":
                    self.peer.status = "running"
            return info
        if cmd == "migrate":
            self.migrating = True
        if cmd == "migrate_cancel":
            self.infos = [{"status": "cancelled"}]
        if cmd == "cont":
            self.status = "running"
        if cmd == "migrate-incoming":
            return {}
        answers = {
            "query-memory-size-summary": {"base-memory": MEMORY},
            "query-migrate-parameters": DEFAULTS,
            "query-migrate-capabilities": [],
            "query-kvm": {"enabled": True, "present": True},
            "query-version": {"qemu": {"major": 9, "minor": 2, "micro": 0}},
        }
        return answers.get(cmd, {})


def active(sync: int, sent: int, left: int, **extra) -> dict:
    """A query-migrate reading: `sent` MiB of pages so far, `left` MiB dirty."""
    ram = {
        "dirty-sync-count": sync,
        "transferred": sent * MiB,
        "normal": sent * MiB // 4096,
        "duplicate": 0,
        "remaining": left * MiB,
        "page-size": 4096,
    }
    return {"status": "active", "ram": ram, **extra}


def completed(downtime_ms: int = 250) -> dict:
    return {
        "status": "completed",
        "total-time": 30000,
        "downtime": downtime_ms,
        "ram": {"transferred": 999 * MiB},
    }


def run(src: FakeQemu, dst: FakeQemu, **options):
    opts = MigrationOptions(uri="unix:/x", poll=0.001, **options)
    engine = QmpMigration(Endpoint("/src"), Endpoint("/dst"), opts)
    engine.clock = lambda: src.now
    src.peer = dst
    report = asyncio.run(engine._run(src, dst))
    return engine, report


def saturated(rounds: int) -> list[dict]:
    """A hostile writer: every round sends 40 MiB and finds 48 MiB dirty."""
    infos = [active(1, 0, 256)]
    for n in range(rounds):
        infos.append(active(n + 2, 100 + 40 * n, 48))
    return infos


def test_hostile_rounds_throttle_through_auto_converge_then_force_switch_over():
    src = FakeQemu("running", [*saturated(40), completed(900)])
    dst = FakeQemu("inmigrate")
    _, report = run(src, dst)
    params = src.sent("migrate-set-parameters")
    assert {"downtime-limit": 300, **throttle_parameters(0)} in params
    assert throttle_parameters(20) in params  # the first step
    assert params.index(throttle_parameters(20)) < params.index(
        {"downtime-limit": FORCE_DOWNTIME_MS}
    )
    caps = src.sent("migrate-set-capabilities")[0]["capabilities"]
    assert {"capability": "auto-converge", "state": True} in caps
    assert report.completed and report.downtime == pytest.approx(0.9)
    assert len(report.rounds) < 30
    assert report.rounds[-1].action == "switch-over"
    assert report.ended_by == report.rounds[-1].rule


def test_qemu_policy_only_watches():
    src = FakeQemu("running", [*saturated(12), completed()])
    _, report = run(src, FakeQemu("inmigrate"), policy="qemu")
    params = src.sent("migrate-set-parameters")
    assert params == [{"downtime-limit": 300}]
    caps = src.sent("migrate-set-capabilities")[0]["capabilities"]
    assert {"capability": "auto-converge", "state": False} in caps
    assert report.completed and report.ended_by == "qemu"
    assert all(r.action == "continue" for r in report.rounds)


def test_timeout_cancels_resumes_and_restores_the_source():
    src = FakeQemu("running", saturated(3))
    _, report = run(src, FakeQemu("inmigrate"), timeout=0.05)
    assert report.status == "cancelled" and report.ended_by == "timeout"
    assert src.sent("migrate_cancel") == [None]
    assert src.sent("migrate-set-parameters")[-1] == DEFAULTS
    assert report.source_running


def test_abort_over_max_downtime_gives_up():
    src = FakeQemu("running", saturated(40))
    _, report = run(src, FakeQemu("inmigrate"), max_downtime=0.5)
    assert report.status == "aborted" and report.ended_by == "max-downtime"
    assert src.sent("migrate_cancel") == [None]
    assert report.source_running


def test_a_source_stopped_by_a_failed_switch_over_is_resumed():
    src = FakeQemu("running", [active(1, 0, 256), {"status": "failed"}])
    src.status = "running"
    failing = src.execute

    async def stop_then_fail(cmd, args=None):
        if cmd == "migrate":  # QEMU stopped the guest, then the stream broke
            src.status = "postmigrate"
        return await failing(cmd, args)

    src.execute = stop_then_fail
    _, report = run(src, FakeQemu("inmigrate"))
    assert report.status == "failed"
    assert src.sent("cont") == [None] and report.source_running


def test_a_destination_that_never_starts_fails_and_resumes_the_source():
    src = FakeQemu("running", [active(1, 0, 256), completed()])
    dst = FakeQemu("inmigrate")

    async def gone(cmd, args=None):
        if cmd == "query-status" and src.status == "postmigrate":
            raise ConnectionResetError("destination exited")
        return await FakeQemu.execute(dst, cmd, args)

    dst.execute = gone
    _, report = run(src, dst)
    assert report.status == "failed" and not report.destination_running
    assert src.sent("cont") == [None] and report.source_running


def test_refuses_a_destination_not_waiting_for_a_migration():
    with pytest.raises(MigrationError, match="-incoming defer"):
        run(FakeQemu("running"), FakeQemu("running"))


def test_refuses_a_source_that_is_not_running_or_paused():
    with pytest.raises(MigrationError, match="shutdown"):
        run(FakeQemu("shutdown"), FakeQemu("inmigrate"))
