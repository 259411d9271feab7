"""QEMU's migration controls as ferry uses them, one QMP exchange each:
the throttle settings that steer auto-converge, the settings saved and
restored around a migration, starting the destination's listener, waiting
for it to run, and the warning about TCG guests on old QEMU."""

from __future__ import annotations

import asyncio
import time

from qemu.qmp import QMPClient

from converters.events import EventStream
from converters.migrate_disks import quietly

# QEMU accepts a downtime-limit up to 2000 s (MAX_MIGRATE_DOWNTIME_SECONDS in
# migration/migration.c); with it, the next convergence check always passes.
FORCE_DOWNTIME_MS = 2_000_000
ACTIVE = {"setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling"}
# What ferry changes on the source; restored when a migration is given up.
SETTINGS = (
    "downtime-limit",
    "max-bandwidth",
    "throttle-trigger-threshold",
    "cpu-throttle-initial",
    "cpu-throttle-increment",
    "max-cpu-throttle",
)
CAPABILITIES = ("events", "auto-converge", "pause-before-switchover")


def throttle_parameters(level: int) -> dict[str, int]:
    """Auto-converge settings that put QEMU's CPU throttle at `level`%.

    QEMU takes an auto-converge step after two sync periods in which the
    guest dirtied more than `throttle-trigger-threshold`% of what was sent
    (migration_trigger_throttle, migration/ram.c); its first step goes to
    `cpu-throttle-initial`, later ones add `cpu-throttle-increment`, capped
    at `max-cpu-throttle`. Initial = max = level with a 1% trigger makes the
    next step land on ferry's level. Before ferry throttles, a 100% trigger
    and a cap of 1% (QEMU's minimum) leave the guest essentially alone."""
    if level <= 0:
        return {
            "throttle-trigger-threshold": 100,
            "cpu-throttle-initial": 1,
            "cpu-throttle-increment": 1,
            "max-cpu-throttle": 1,
        }
    return {
        "throttle-trigger-threshold": 1,
        "cpu-throttle-initial": level,
        "cpu-throttle-increment": 99,
        "max-cpu-throttle": level,
    }


def capabilities(states: dict[str, bool]) -> dict:
    return {"capabilities": [{"capability": k, "state": v} for k, v in states.items()]}


def stamp(event) -> float:
    ts = event["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


async def saved(src: QMPClient) -> dict:
    """The source's settings that ferry changes, to restore on give-up."""
    params = await src.execute("query-migrate-parameters")
    caps = {
        c["capability"]: c["state"]
        for c in await src.execute("query-migrate-capabilities")
    }
    return {
        "params": {k: params[k] for k in SETTINGS if k in params},
        "caps": {k: caps.get(k, False) for k in CAPABILITIES},
    }


async def listen(dst: QMPClient, uri: str, events: EventStream) -> None:
    """Have a `-incoming defer` destination listen on `uri`."""
    try:
        await dst.execute("migrate-incoming", {"uri": uri})
    except Exception as e:  # noqa: BLE001 - started with -incoming URI instead
        events.log(f"destination: {e}; assuming it listens already", "warning")


async def resume(dst: QMPClient, was_running: bool, timeout: float = 60.0) -> bool:
    """Wait for the destination to run; `cont` it if it was started with -S
    (the documented NBD flow pauses it) while the source ran."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await quietly(dst.execute("query-status"))
        if state is None:
            return False
        if state["running"] or not was_running:
            return True
        if state["status"] in ("paused", "prelaunch"):
            await quietly(dst.execute("cont"))
        await asyncio.sleep(0.1)
    return False


async def warn_tcg(src: QMPClient, events: EventStream) -> None:
    """QEMU before 9.0 can lose guest writes when it migrates a TCG guest
    (fixed by QEMU commit 03bfc2188f; see tests/harness/migration_guest.py)."""
    kvm = await quietly(src.execute("query-kvm"), {})
    version = (await quietly(src.execute("query-version"), {})).get("qemu", {})
    if not kvm.get("enabled") and version and version.get("major", 99) < 9:
        events.log(
            f"the source runs QEMU {version['major']}.{version['minor']} without "
            "KVM: QEMU before 9.0 can lose guest writes while migrating a TCG "
            "guest (QEMU commit 03bfc2188f)",
            "warning",
        )
