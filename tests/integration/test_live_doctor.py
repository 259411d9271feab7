"""`ferry doctor --role live` checks what live capture's write tracker
needs: tracefs with the block tracepoints, and a trace instance it may
make (made and removed for real). A tracefs without the block events, or
no tracefs, fails with one line saying why."""

from __future__ import annotations

import subprocess
import sys

from converters import doctor
from converters.write_tracker import TRACEFS


def test_doctor_live_reports_tracefs_usable_and_leaves_no_instance():
    before = set((TRACEFS / "instances").iterdir())
    out = subprocess.run(
        [sys.executable, "-m", "converters.cli", "doctor", "--role", "live"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    (line,) = [ln for ln in out.stdout.splitlines() if " tracefs:" in ln]
    assert line.startswith("OK"), out.stdout
    assert "block tracepoints" in line
    assert set((TRACEFS / "instances").iterdir()) == before


def test_doctor_live_fails_without_tracefs_or_its_block_events(tmp_path):
    nothing = doctor.check_tracefs(tmp_path / "none")
    assert nothing.status == doctor.FAIL
    assert "cannot track writes" in nothing.detail
    # a tracefs-like tree whose kernel lacks the block layer's events
    (tmp_path / "bare" / "instances").mkdir(parents=True)
    (tmp_path / "bare" / "events" / "block" / "block_bio_queue").mkdir(parents=True)
    bare = doctor.check_tracefs(tmp_path / "bare")
    assert bare.status == doctor.FAIL
    assert "block_rq_complete" in bare.detail
    assert len(bare.line().splitlines()) == 1
