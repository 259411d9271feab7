"""When to stop a pre-copy loop: ferry's pre-copy rules as one pure policy.

Pre-copy sends everything while the guest runs, then again whatever it dirtied,
until the rest is small enough to send during a short pause. QEMU's default
stops only when remaining / bandwidth falls under the downtime limit, with no
bound on rounds, so a guest that dirties faster than the link carries never
finishes. ferry (after KVM's and Xen's practice) ends the loop by rules:
concentration, non-diffusion and bounded rounds, and limits the writer while
migrating. Here they are one policy, fed one observation per round, which
answers continue / throttle the writer / switch over now / abort.

It knows no QEMU and does no I/O: engines (QMP RAM migration, blockdev-mirror,
the live disk capture with dirty blocks) turn their counters into `Round`s and
apply the `Decision`s. Quantities are bytes and seconds, so memory and disks
share it; `page_size` only converts bytes for the policy's page threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

# QEMU auto-converge: cpu-throttle-initial 20, cpu-throttle-increment 10,
# max-cpu-throttle 99 (migration/options.c, DEFAULT_MIGRATE_CPU_THROTTLE_*).
QEMU_THROTTLE_STEPS = (20, 30, 40, 50, 60, 70, 80, 90, 99)


class Action(Enum):
    CONTINUE = "continue"  # run another pre-copy round
    THROTTLE = "throttle"  # slow the writer to `Decision.throttle`%, continue
    SWITCH_OVER = "switch-over"  # pause, send the rest, resume on destination
    ABORT = "abort"  # give up; the guest keeps running on the source


@dataclass(frozen=True)
class Round:
    """What one pre-copy round observed."""

    number: int  # 1 is the full first pass
    bytes_sent: int
    bytes_dirtied: int  # dirtied by the guest during this round
    bytes_remaining: int  # dirty set left at the end of the round
    bandwidth: float  # bytes/s measured over the round
    elapsed: float  # seconds since the migration started
    page_size: int = 4096

    def __post_init__(self) -> None:
        if self.number < 1 or self.page_size < 1:
            raise ValueError("round number and page size must be positive")
        counts = (self.bytes_sent, self.bytes_dirtied, self.bytes_remaining)
        if min(counts) < 0 or self.bandwidth < 0 or self.elapsed < 0:
            raise ValueError(f"negative observation in {self!r}")

    @property
    def pages_remaining(self) -> int:
        return math.ceil(self.bytes_remaining / self.page_size)

    @property
    def estimated_downtime(self) -> float:
        """Seconds to send the rest with the guest paused, at this bandwidth."""
        if self.bytes_remaining == 0:
            return 0.0
        if self.bandwidth <= 0:
            return math.inf
        return self.bytes_remaining / self.bandwidth


@dataclass(frozen=True)
class PolicyParams:
    """The rules' knobs; None (or no throttle steps) turns a rule off."""

    # QEMU's downtime-limit default: 300 ms (DEFAULT_MIGRATE_SET_DOWNTIME).
    downtime_target: float = 0.3
    # Seed, concentration: a round's dirty set of at most 50 pages.
    dirty_pages_threshold: int | None = 50
    # Seed, bounded rounds: fewer than 30. Xen: DEF_MAX_ITERS 29, "limit us to
    # 30 times round loop" (the 30th is the stop-and-copy).
    max_rounds: int | None = 30
    # Xen: DEF_MAX_FACTOR 3, "never send more than 3x" the guest's pages.
    max_sent_factor: float | None = 3.0
    # Seed, non-diffusion: a round helps only if it sends more than the guest
    # dirties in it. Act after this many rounds in a row that do not;
    # QEMU's auto-converge also waits for 2 such periods before each step.
    nondiffusion_patience: int | None = 2
    # Throttle levels (% of the writer held back) to step through before
    # giving up on convergence, as a writer limited per scheduling slice is.
    throttle_steps: tuple[int, ...] = QEMU_THROTTLE_STEPS
    # Hard limit: abort rather than switch over with a longer downtime.
    max_downtime: float | None = None

    def __post_init__(self) -> None:
        if self.downtime_target < 0:
            raise ValueError("downtime_target must be >= 0")
        if self.max_rounds is not None and self.max_rounds < 2:
            raise ValueError("max_rounds must leave room for one pre-copy round")
        if self.nondiffusion_patience is not None and self.nondiffusion_patience < 1:
            raise ValueError("nondiffusion_patience must be >= 1")
        steps = self.throttle_steps
        if any(not 0 < s < 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("throttle_steps must rise strictly within 1..99")
        if self.max_downtime is not None and self.max_downtime < self.downtime_target:
            raise ValueError("max_downtime must be >= downtime_target")

    @classmethod
    def seed(cls) -> PolicyParams:
        """ferry's policy: every rule on, the defaults above."""
        return cls()

    @classmethod
    def qemu_default(cls) -> PolicyParams:
        """QEMU without auto-converge, for comparison: switch over only when
        remaining / bandwidth <= downtime-limit; no round bound, no throttle."""
        return cls(
            dirty_pages_threshold=None,
            max_rounds=None,
            max_sent_factor=None,
            nondiffusion_patience=None,
            throttle_steps=(),
        )

    @classmethod
    def named(cls, name: str) -> PolicyParams:
        """`--policy seed|qemu`."""
        presets = {"seed": cls.seed, "qemu": cls.qemu_default}
        if name not in presets:
            raise ValueError(f"unknown policy {name!r}; choose seed or qemu")
        return presets[name]()


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str  # concentration, non-diffusion, max-rounds, max-sent, max-downtime
    reason: str  # one sentence with the numbers, for the event stream
    estimated_downtime: float  # seconds, remaining / bandwidth
    throttle: int = 0  # % throttle in force after this decision
    round: int = 0

    @property
    def final(self) -> bool:
        return self.action in (Action.SWITCH_OVER, Action.ABORT)


@dataclass
class PrecopyPolicy:
    """Feed `decide` one `Round` per pre-copy round; it keeps the history."""

    params: PolicyParams
    size: int  # bytes being migrated: guest memory or disk size
    throttle: int = field(default=0, init=False)
    _history: list[tuple[Round, Decision]] = field(default_factory=list, init=False)
    _stalled: int = field(default=0, init=False)
    _sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError("size must be positive")

    @property
    def history(self) -> tuple[tuple[Round, Decision], ...]:
        return tuple(self._history)

    @property
    def bytes_sent(self) -> int:
        return self._sent

    def decide(self, r: Round) -> Decision:
        """The action after round `r`. Concentration wins over the bounds,
        which win over non-diffusion; a switch-over longer than
        `max_downtime` becomes an abort."""
        if self._history and self._history[-1][1].final:
            raise RuntimeError("the policy already decided to end the migration")
        p = self.params
        self._sent += r.bytes_sent
        # Non-diffusion: the round did not gain on the guest.
        previous = self._history[-1][0] if self._history else None
        diffused = r.bytes_dirtied >= r.bytes_sent or (
            previous is not None and r.bytes_remaining >= previous.bytes_remaining
        )
        self._stalled = self._stalled + 1 if diffused else 0
        action, rule, why = self._rule(r)
        est = r.estimated_downtime
        limit = p.max_downtime
        if action is Action.SWITCH_OVER and limit is not None and est > limit:
            why = f"{rule}: a {est:.3g} s downtime > {limit:g} s; source resumes"
            action, rule = Action.ABORT, "max-downtime"
        if action is Action.THROTTLE:
            self._stalled = 0  # give the new level `patience` rounds to work
        decision = Decision(action, rule, why, est, self.throttle, r.number)
        self._history.append((r, decision))
        return decision

    def _rule(self, r: Round) -> tuple[Action, str, str]:
        p, est, switch = self.params, r.estimated_downtime, Action.SWITCH_OVER
        pages, threshold = r.pages_remaining, p.dirty_pages_threshold
        if threshold is not None and pages <= threshold:
            return switch, "concentration", f"{pages} dirty pages <= {threshold}"
        if est <= p.downtime_target:
            why = f"estimated downtime {est:.3g} s <= target {p.downtime_target:g} s"
            return switch, "concentration", why
        if p.max_rounds is not None and r.number >= p.max_rounds - 1:
            why = f"round {r.number}: the last pre-copy round before {p.max_rounds}"
            return switch, "max-rounds", why
        # Another round sends at least `remaining` more: stop before the
        # pre-copy total crosses the cap (Xen checks the same total after the
        # round); the stop-and-copy then sends what is left.
        factor = p.max_sent_factor
        if factor is not None and self._sent + r.bytes_remaining > factor * self.size:
            why = f"{self._sent} B sent + {r.bytes_remaining} B left > {factor:g}x size"
            return switch, "max-sent", why
        stalled = f"dirty set not shrinking for {self._stalled} round(s)"
        patience = p.nondiffusion_patience
        if patience is None or self._stalled < patience:
            return Action.CONTINUE, "", stalled if self._stalled else "shrinking"
        higher = [s for s in p.throttle_steps if s > self.throttle]
        if higher:
            self.throttle = higher[0]
            why = f"{stalled}; throttling the writer to {self.throttle}%"
            return Action.THROTTLE, "non-diffusion", why
        return switch, "non-diffusion", f"{stalled} at {self.throttle}% throttle"

    def summary(self) -> dict[str, object]:
        """Totals for the report: rounds, pre-copy bytes (the stop-and-copy
        adds `bytes_remaining`), highest throttle, and how it ended."""
        last = self._history[-1] if self._history else None
        return {
            "rounds": len(self._history),
            "bytes_sent": self._sent,
            "sent_factor": self._sent / self.size,
            "max_throttle": max((d.throttle for _, d in self._history), default=0),
            "bytes_remaining": last[0].bytes_remaining if last else 0,
            "elapsed": last[0].elapsed if last else 0.0,
            "action": last[1].action.value if last else None,
            "rule": last[1].rule if last else "",
            "estimated_downtime": last[1].estimated_downtime if last else 0.0,
        }
