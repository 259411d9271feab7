"""A migration that does not complete leaves the guest running on the
source, intact: cancelled by the user, or with its destination gone."""

from __future__ import annotations

import pytest

from tests.harness.migration_guest import have_tools
from tests.harness.migration_run import WORKLOADS, GuestSession

MISSING = have_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def assert_stayed(o) -> None:
    r = o.report
    assert r.source_running and o.source_alive, r.table()
    # The writer carries on on the source, its counter unbroken.
    assert len(o.after) >= 2, o.source_console[-2000:]
    assert o.after[-1].pages > (o.before + o.during)[-1].pages
    for sign in ("Kernel panic", "BUG:", "Oops"):
        assert sign not in o.source_console


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    path = tmp_path_factory.mktemp("cancel")
    with GuestSession(path, WORKLOADS["moderate"]) as session:
        yield session


def test_cancelled_migration_leaves_the_source_running(guest):
    o = guest.hop(cancel_after=1.5)
    assert o.report.status == "cancelled" and o.report.ended_by == "cancel"
    assert_stayed(o)


def test_destination_lost_midway_leaves_the_source_running(guest):
    o = guest.hop(kill_dest_after=1.5)
    assert o.report.status == "failed", o.report.table()
    assert not o.dest_alive
    assert_stayed(o)
