"""Live migration of a running guest between two QEMUs (TCG here) over a
32 MiB/s link, driven over QMP: the seed's policy against QEMU's default for
idle, moderate and hostile writers (issue 8)."""

from __future__ import annotations

import pytest

from tests.harness.migration_guest import have_tools
from tests.harness.migration_run import WORKLOADS, GuestSession, Outcome

MISSING = have_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def assert_moved(o: Outcome) -> None:
    """Completed, and the writer carries on on the destination where it
    left off: its counter continues, it does not restart."""
    r = o.report
    assert r.completed, r.table()
    assert r.destination_running and o.dest_alive, r.table()
    assert r.downtime is not None and r.downtime > 0
    for sign in ("Kernel panic", "BUG:", "Oops"):
        assert sign not in o.dest_console, o.dest_console[-3000:]
    assert len(o.after) >= 2, o.dest_console[-2000:]
    assert o.after[-1].t > o.after[0].t
    last_on_source = (o.before + o.during)[-1]
    assert o.after[0].pages >= last_on_source.pages


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["idle", "moderate"])
def test_idle_and_moderate_writers_converge_under_both_policies(tmp_path, workload):
    with GuestSession(tmp_path, WORKLOADS[workload]) as guest:
        qemu = guest.hop(policy="qemu")
        seed = guest.hop(policy="seed")
    print(qemu.report.table(), seed.report.table(), sep="\n\n")
    assert_moved(qemu)
    assert_moved(seed)
    assert len(seed.report.rounds) < 30
    # ferry's downtime is no worse than QEMU's default: both switch over
    # once the rest fits the 300 ms target, but the rest at that moment, and
    # the host's load during the pause, vary from run to run (50 to 370 ms
    # seen here for either policy), so allow QEMU's figure or the target,
    # half again, plus 100 ms.
    target = 0.3
    allowed = 1.5 * max(qemu.report.downtime, target) + 0.1
    assert seed.report.downtime <= allowed, (
        seed.report.table(),
        qemu.report.table(),
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One hostile guest for both policies: booted once, it stays on its
    source when QEMU's default gives up, then moves under the seed's."""
    with GuestSession(tmp_path_factory.mktemp("hostile"), WORKLOADS["hostile"]) as s:
        yield s


@pytest.mark.slow
def test_hostile_writer_never_finishes_under_qemu_default(hostile):
    o = hostile.hop(policy="qemu", timeout=45)
    r = o.report
    print(r.table())
    assert r.status == "cancelled" and r.ended_by == "timeout", r.table()
    assert r.max_throttle == 0
    # QEMU never got near its switch-over test: the dirty set stayed far
    # above what the link carries in the 300 ms downtime limit.
    assert len(r.rounds) >= 10
    assert all(x.remaining > 3 * 0.3 * x.bandwidth for x in r.rounds[2:])
    # The cancelled migration left the guest running on the source.
    assert r.source_running and o.source_alive
    assert len(o.after) >= 2 and o.after[-1].pages > o.after[0].pages


@pytest.mark.slow
def test_hostile_writer_is_throttled_then_switched_over_within_30_rounds(hostile):
    o = hostile.hop(policy="seed", timeout=300)
    r = o.report
    print("\n".join(x.line() for x in r.rounds), r.table(), sep="\n")
    assert_moved(o)
    assert len(r.rounds) < 30, r.table()
    actions = [x.action for x in r.rounds]
    assert "throttle" in actions, actions
    first_throttle = actions.index("throttle")
    assert "switch-over" not in actions[:first_throttle], actions
    assert r.max_throttle > 0  # QEMU applied it
    assert r.ended_by, r.table()
    assert 0 < r.downtime < 10
