"""The pre-copy policy on synthetic traces: one test per rule, then whole
migrations of a simulated guest (idle, moderate, hostile) under ferry's policy
and under QEMU's default."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.precopy_policy import (
    QEMU_THROTTLE_STEPS,
    Action,
    Decision,
    PolicyParams,
    PrecopyPolicy,
    Round,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3
PAGE = 4096


def rnd(n, sent, dirtied, remaining, bandwidth=100 * MiB, elapsed=None, **kw):
    return Round(n, sent, dirtied, remaining, bandwidth, elapsed or float(n), **kw)


def stalled(n, size=64 * MiB):
    """A round that sent `size` while the guest dirtied as much again."""
    return rnd(n, size, size, size)


@dataclass
class Run:
    policy: PrecopyPolicy
    decisions: list[Decision]

    @property
    def last(self) -> Decision:
        return self.decisions[-1]

    @property
    def actions(self) -> list[Action]:
        return [d.action for d in self.decisions]


def simulate(
    params: PolicyParams,
    *,
    memory: int = 1 * GiB,
    dirty_rate: float,
    link: float = 100 * MiB,
    working_set: int | None = None,
    page_size: int = PAGE,
    limit: int = 1000,
) -> Run:
    """Run a synthetic guest through the policy until it ends or `limit` rounds.

    Round 1 sends all of `memory`; each later round sends the previous round's
    dirty set. While a round lasts (bytes / link), the guest dirties
    `dirty_rate` bytes/s of distinct pages within its working set, and a
    throttle of t% cuts that rate by t% (as QEMU's CPU throttle would)."""
    policy = PrecopyPolicy(params, memory)
    working_set = memory if working_set is None else working_set
    to_send, elapsed, decisions = memory, 0.0, []
    for n in range(1, limit + 1):
        duration = to_send / link
        elapsed += duration
        rate = dirty_rate * (1 - policy.throttle / 100)
        dirtied = int(min(rate * duration, working_set))
        r = Round(n, to_send, dirtied, dirtied, link, elapsed, page_size)
        decisions.append(policy.decide(r))
        if decisions[-1].final:
            break
        to_send = dirtied
    return Run(policy, decisions)


# -- rule 1: concentration ---------------------------------------------------


def test_dirty_set_of_at_most_50_pages_switches_over():
    slow = 1 * KiB  # so the downtime rule cannot be what fires
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    d = policy.decide(rnd(1, 1 * GiB, 50 * PAGE, 50 * PAGE, bandwidth=slow))
    assert (d.action, d.rule) == (Action.SWITCH_OVER, "concentration")
    assert "50 dirty pages" in d.reason


def test_dirty_set_of_51_pages_on_a_slow_link_continues():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    d = policy.decide(rnd(1, 1 * GiB, 10 * PAGE, 51 * PAGE, bandwidth=1 * KiB))
    assert d.action is Action.CONTINUE


def test_remaining_sendable_within_downtime_target_switches_over():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    d = policy.decide(rnd(1, 1 * GiB, 30 * MiB, 30 * MiB, bandwidth=100 * MiB))
    assert (d.action, d.rule) == (Action.SWITCH_OVER, "concentration")
    assert d.estimated_downtime == pytest.approx(0.3)


def test_remaining_just_over_downtime_target_continues():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    d = policy.decide(rnd(1, 1 * GiB, 31 * MiB, 31 * MiB, bandwidth=100 * MiB))
    assert d.action is Action.CONTINUE
    assert d.estimated_downtime == pytest.approx(0.31)


def test_page_threshold_counts_in_the_rounds_unit_so_disk_blocks_work():
    block = 64 * KiB  # a live disk reports dirty blocks, not 4 KiB pages
    policy = PrecopyPolicy(PolicyParams(), 10 * GiB)
    d = policy.decide(
        rnd(1, 10 * GiB, 0, 50 * block, bandwidth=1 * KiB, page_size=block)
    )
    assert (d.action, d.rule) == (Action.SWITCH_OVER, "concentration")


# -- rule 2: non-diffusion ---------------------------------------------------


def test_writer_outpacing_the_link_for_patience_rounds_is_throttled():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    waiting = policy.decide(stalled(1))
    assert waiting.action is Action.CONTINUE and "not shrinking" in waiting.reason
    d = policy.decide(stalled(2))
    assert (d.action, d.rule, d.throttle) == (Action.THROTTLE, "non-diffusion", 20)
    assert policy.throttle == 20


def test_throttle_steps_up_like_auto_converge_while_still_not_shrinking():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    levels = [policy.decide(stalled(n)).throttle for n in range(1, 9)]
    assert levels == [0, 20, 20, 30, 30, 40, 40, 50]


def test_a_shrinking_round_resets_the_non_diffusion_count():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    policy.decide(stalled(1))
    assert policy.decide(rnd(2, 64 * MiB, 32 * MiB, 32 * MiB)).action is Action.CONTINUE
    assert policy.decide(rnd(3, 32 * MiB, 32 * MiB, 32 * MiB)).action is Action.CONTINUE
    assert policy.decide(rnd(4, 32 * MiB, 32 * MiB, 32 * MiB)).action is Action.THROTTLE


def test_remaining_that_grows_counts_as_diffusion_even_if_sent_exceeds_dirtied():
    # Counters from a real engine need not add up: trust the dirty set too.
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    policy.decide(rnd(1, 64 * MiB, 10 * MiB, 40 * MiB))
    assert policy.decide(rnd(2, 64 * MiB, 10 * MiB, 41 * MiB)).action is (
        Action.CONTINUE
    )
    assert policy.decide(rnd(3, 64 * MiB, 10 * MiB, 42 * MiB)).action is (
        Action.THROTTLE
    )


def test_still_diffusing_at_max_throttle_switches_over_instead_of_looping():
    params = PolicyParams(
        throttle_steps=(50, 99), max_rounds=None, max_sent_factor=None
    )
    policy = PrecopyPolicy(params, 1 * GiB)
    actions = [policy.decide(stalled(n)).action for n in range(1, 7)]
    assert actions == [Action.CONTINUE, Action.THROTTLE] * 2 + [
        Action.CONTINUE,
        Action.SWITCH_OVER,
    ]
    assert policy.history[-1][1].rule == "non-diffusion"
    assert policy.history[-1][1].throttle == 99


def test_without_throttle_steps_non_diffusion_switches_over_at_once():
    policy = PrecopyPolicy(PolicyParams(throttle_steps=()), 1 * GiB)
    policy.decide(stalled(1))
    d = policy.decide(stalled(2))
    assert (d.action, d.rule, d.throttle) == (Action.SWITCH_OVER, "non-diffusion", 0)


def test_patience_sets_how_many_stalled_rounds_are_tolerated():
    policy = PrecopyPolicy(PolicyParams(nondiffusion_patience=4), 1 * GiB)
    actions = [policy.decide(stalled(n)).action for n in range(1, 5)]
    assert actions == [Action.CONTINUE] * 3 + [Action.THROTTLE]


# -- rule 3: bounded rounds and bytes ----------------------------------------


def test_round_29_is_the_last_pre_copy_round_so_there_are_fewer_than_30():
    policy = PrecopyPolicy(PolicyParams(nondiffusion_patience=None), 100 * GiB)
    shrinking = [rnd(n, 100 * MiB, 1 * MiB, (200 - n) * MiB) for n in range(1, 30)]
    decisions = [policy.decide(r) for r in shrinking]
    assert all(d.action is Action.CONTINUE for d in decisions[:-1])
    assert (decisions[-1].action, decisions[-1].rule) == (
        Action.SWITCH_OVER,
        "max-rounds",
    )
    assert decisions[-1].round == 29


def test_sending_more_than_three_times_the_size_switches_over():
    policy = PrecopyPolicy(PolicyParams(nondiffusion_patience=None), 1 * GiB)
    assert policy.decide(rnd(1, 1 * GiB, 1 * GiB, 1 * GiB)).action is Action.CONTINUE
    assert policy.decide(rnd(2, 1 * GiB, 1 * GiB, 1 * GiB)).action is Action.CONTINUE
    d = policy.decide(rnd(3, 1 * GiB, 1 * GiB, 1 * GiB))
    assert (d.action, d.rule) == (Action.SWITCH_OVER, "max-sent")
    assert policy.bytes_sent == 3 * GiB


def test_max_sent_factor_is_configurable_and_can_be_turned_off():
    tight = PrecopyPolicy(PolicyParams(max_sent_factor=1.5), 1 * GiB)
    assert tight.decide(rnd(1, 1 * GiB, 0, 600 * MiB, bandwidth=1 * MiB)).rule == (
        "max-sent"
    )
    off = PrecopyPolicy(PolicyParams(max_sent_factor=None), 1 * GiB)
    d = off.decide(rnd(1, 1 * GiB, 0, 600 * MiB, bandwidth=1 * MiB))
    assert d.action is Action.CONTINUE


# -- rule 4: abort over a hard downtime limit --------------------------------


def test_forced_switch_over_beyond_max_downtime_aborts_and_resumes_source():
    params = PolicyParams(max_downtime=2.0, max_rounds=3, nondiffusion_patience=None)
    policy = PrecopyPolicy(params, 1 * GiB)
    policy.decide(rnd(1, 1 * GiB, 500 * MiB, 500 * MiB))
    d = policy.decide(rnd(2, 500 * MiB, 500 * MiB, 500 * MiB))
    assert (d.action, d.rule) == (Action.ABORT, "max-downtime")
    assert d.estimated_downtime == pytest.approx(5.0)
    assert "max-rounds" in d.reason and d.final


def test_forced_switch_over_within_max_downtime_goes_ahead():
    params = PolicyParams(max_downtime=10.0, max_rounds=3, nondiffusion_patience=None)
    policy = PrecopyPolicy(params, 1 * GiB)
    policy.decide(rnd(1, 1 * GiB, 500 * MiB, 500 * MiB))
    d = policy.decide(rnd(2, 500 * MiB, 500 * MiB, 500 * MiB))
    assert (d.action, d.rule) == (Action.SWITCH_OVER, "max-rounds")


def test_without_max_downtime_a_forced_switch_over_never_aborts():
    run = simulate(PolicyParams(), dirty_rate=10 * GiB)  # whole memory, hot
    assert run.last.action is Action.SWITCH_OVER
    assert run.last.estimated_downtime > 5
    assert Action.ABORT not in run.actions


# -- decisions, state and presets --------------------------------------------


def test_every_decision_carries_the_estimated_downtime():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    d = policy.decide(rnd(1, 1 * GiB, 200 * MiB, 200 * MiB, bandwidth=100 * MiB))
    assert (d.action, d.estimated_downtime) == (Action.CONTINUE, pytest.approx(2.0))


def test_unmeasured_bandwidth_means_unknown_downtime_not_a_switch_over():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    d = policy.decide(rnd(1, 1 * GiB, 100 * MiB, 100 * MiB, bandwidth=0.0))
    assert d.action is Action.CONTINUE and math.isinf(d.estimated_downtime)
    empty = rnd(1, 1 * GiB, 0, 0, bandwidth=0.0)
    assert PrecopyPolicy(PolicyParams(), 1 * GiB).decide(empty).estimated_downtime == 0


def test_deciding_after_the_end_is_an_error():
    policy = PrecopyPolicy(PolicyParams(), 1 * GiB)
    policy.decide(rnd(1, 1 * GiB, 0, 0))
    with pytest.raises(RuntimeError):
        policy.decide(rnd(2, 0, 0, 0))


def test_history_and_summary_report_rounds_bytes_throttle_and_outcome():
    run = simulate(PolicyParams(), dirty_rate=250 * MiB, working_set=64 * MiB)
    s = run.policy.summary()
    assert s["rounds"] == len(run.decisions) == len(run.policy.history)
    assert s["bytes_sent"] == sum(r.bytes_sent for r, _ in run.policy.history)
    assert s["sent_factor"] == pytest.approx(s["bytes_sent"] / GiB)
    assert s["max_throttle"] == max(d.throttle for d in run.decisions) > 0
    assert (s["action"], s["rule"]) == ("switch-over", run.last.rule)
    assert s["estimated_downtime"] == run.last.estimated_downtime
    assert s["elapsed"] == run.policy.history[-1][0].elapsed
    assert s["bytes_remaining"] == run.policy.history[-1][0].bytes_remaining
    assert PrecopyPolicy(PolicyParams(), 1).summary()["rounds"] == 0


def test_qemu_default_applies_only_the_downtime_rule():
    policy = PrecopyPolicy(PolicyParams.qemu_default(), 1 * GiB)
    hot = [rnd(n, 1 * GiB, 1 * GiB, 1 * GiB) for n in range(1, 200)]
    assert {policy.decide(r).action for r in hot} == {Action.CONTINUE}
    few_pages = rnd(200, 1 * GiB, 10 * PAGE, 10 * PAGE, bandwidth=1 * KiB)
    assert policy.decide(few_pages).action is Action.CONTINUE
    assert policy.decide(rnd(201, 1 * GiB, 0, 1 * MiB)).action is Action.SWITCH_OVER


def test_policy_presets_by_name():
    assert PolicyParams.named("seed") == PolicyParams.seed() == PolicyParams()
    assert PolicyParams.named("qemu") == PolicyParams.qemu_default()
    with pytest.raises(ValueError):
        PolicyParams.named("xen")


def test_defaults_are_the_seeds_xens_and_qemus_numbers():
    p = PolicyParams()
    assert (p.dirty_pages_threshold, p.max_rounds, p.max_sent_factor) == (50, 30, 3.0)
    assert (p.downtime_target, p.max_downtime) == (0.3, None)
    assert (
        p.throttle_steps == QEMU_THROTTLE_STEPS == (20, 30, 40, 50, 60, 70, 80, 90, 99)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"downtime_target": -1},
        {"max_rounds": 1},
        {"nondiffusion_patience": 0},
        {"throttle_steps": (30, 20)},
        {"throttle_steps": (20, 100)},
        {"max_downtime": 0.1},
    ],
)
def test_nonsense_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        PolicyParams(**kwargs)


def test_nonsense_observations_are_refused():
    with pytest.raises(ValueError):
        rnd(0, 1, 1, 1)
    with pytest.raises(ValueError):
        rnd(1, -1, 1, 1)
    with pytest.raises(ValueError):
        PrecopyPolicy(PolicyParams(), 0)


def test_observations_and_decisions_are_frozen():
    r = rnd(1, 1, 1, 1)
    with pytest.raises(AttributeError):
        r.bytes_sent = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        PolicyParams().max_rounds = 5  # type: ignore[misc]


# -- whole migrations of a simulated guest ------------------------------------


def test_idle_guest_switches_over_after_the_first_pass():
    run = simulate(PolicyParams(), dirty_rate=0)
    assert len(run.decisions) == 1
    assert (run.last.action, run.last.rule) == (Action.SWITCH_OVER, "concentration")


def test_moderate_writer_converges_quickly_by_concentration_without_throttle():
    run = simulate(PolicyParams(), dirty_rate=20 * MiB, working_set=256 * MiB)
    assert len(run.decisions) <= 4
    assert (run.last.action, run.last.rule) == (Action.SWITCH_OVER, "concentration")
    assert Action.THROTTLE not in run.actions
    assert run.last.estimated_downtime <= 0.3


@pytest.mark.parametrize("dirty_rate", [0, 5 * MiB, 20 * MiB, 50 * MiB])
def test_idle_and_moderate_downtime_no_worse_than_qemu_default(dirty_rate):
    guest = {"dirty_rate": dirty_rate, "working_set": 256 * MiB}
    ferry = simulate(PolicyParams(), **guest)
    qemu = simulate(PolicyParams.qemu_default(), **guest)
    assert ferry.last.action is qemu.last.action is Action.SWITCH_OVER
    assert ferry.last.estimated_downtime <= qemu.last.estimated_downtime


def test_hostile_writer_is_throttled_then_switched_over_before_30_rounds():
    # 250 MiB/s of writes against a 100 MiB/s link.
    run = simulate(PolicyParams(), dirty_rate=250 * MiB, working_set=64 * MiB)
    assert len(run.decisions) < 30
    acted = [d for d in run.decisions if d.action is not Action.CONTINUE]
    assert acted[0].action is Action.THROTTLE
    assert run.last.action is Action.SWITCH_OVER
    assert run.last.throttle > 0
    assert run.last.estimated_downtime <= 0.3  # throttling made it converge


def test_writer_no_throttle_can_tame_is_switched_over_at_max_throttle():
    run = simulate(PolicyParams(), dirty_rate=100 * GiB, working_set=64 * MiB)
    assert len(run.decisions) < 30
    throttles = [d.throttle for d in run.decisions if d.action is Action.THROTTLE]
    assert throttles == list(QEMU_THROTTLE_STEPS)
    assert (run.last.action, run.last.rule, run.last.throttle) == (
        Action.SWITCH_OVER,
        "non-diffusion",
        99,
    )
    assert run.last.estimated_downtime == pytest.approx(0.64)


def test_hostile_writer_never_converges_under_qemu_default_in_1000_rounds():
    run = simulate(
        PolicyParams.qemu_default(),
        dirty_rate=250 * MiB,
        working_set=64 * MiB,
        limit=1000,
    )
    assert len(run.decisions) == 1000
    assert set(run.actions) == {Action.CONTINUE}


def test_hot_whole_memory_writer_stops_at_three_times_the_size():
    run = simulate(PolicyParams(), dirty_rate=1 * GiB)
    assert (run.last.action, run.last.rule) == (Action.SWITCH_OVER, "max-sent")
    assert run.policy.summary()["sent_factor"] <= 3.0


def test_live_disk_capture_with_dirty_blocks_uses_the_same_policy():
    block = 64 * KiB
    run = simulate(
        PolicyParams(),
        memory=20 * GiB,  # a disk: size in bytes, rounds count dirty blocks
        dirty_rate=200 * MiB,
        link=100 * MiB,
        working_set=512 * MiB,
        page_size=block,
    )
    assert len(run.decisions) < 30 and run.last.action is Action.SWITCH_OVER
    assert Action.THROTTLE in run.actions


@settings(max_examples=300, deadline=None)
@given(
    memory=st.integers(64 * MiB, 64 * GiB),
    dirty_rate=st.floats(0, 100 * GiB),
    link=st.floats(1 * MiB, 10 * GiB),
    working_set_share=st.floats(0.001, 1.0),
)
def test_seed_policy_ends_every_migration_in_fewer_than_30_rounds(
    memory, dirty_rate, link, working_set_share
):
    run = simulate(
        PolicyParams(),
        memory=memory,
        dirty_rate=dirty_rate,
        link=link,
        working_set=int(memory * working_set_share),
        limit=100,
    )
    assert len(run.decisions) < 30
    assert run.last.action is Action.SWITCH_OVER
