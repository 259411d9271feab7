"""What a migration prints: a line per round and a summary table."""

from __future__ import annotations

from converters.migrate_controls import throttle_parameters
from converters.migrate_report import MigrationReport, MigrationRound

MiB = 1 << 20


def test_a_round_is_one_line_with_its_decision():
    r = MigrationRound(
        4,
        40 * MiB,
        40 * MiB,
        48 * MiB,
        30 * MiB,
        10.3,
        20,
        "throttle",
        "non-diffusion",
        "throttling the writer to 30%",
    )
    line = r.line()
    assert "\n" not in line
    assert line.startswith("round  4   10.3s sent 40.0 MiB dirtied 40.0 MiB")
    assert "left 48.0 MiB at 30.0 MiB/s throttle 20% -> throttle: throttling" in line


def test_the_table_says_how_it_ended_and_where_the_guest_runs():
    done = MigrationReport(
        "completed",
        "seed",
        256 * MiB,
        total_time=31.9,
        downtime=1.204,
        downtime_observed=1.208,
        ram_bytes=784 * MiB,
        max_throttle=70,
        ended_by="max-sent",
        reason="3x size",
        destination_running=True,
    )
    table = done.table()
    assert "downtime      1204 ms (1208 ms stop to resume)" in table
    assert "sent / size   3.06x" in table
    assert "destination   running" in table and "source" not in table
    failed = MigrationReport(
        "cancelled", "qemu", 256 * MiB, ended_by="timeout", source_running=True
    )
    assert "source        running" in failed.table()
    assert "downtime      -" in failed.table()


def test_sent_factor_counts_disks_with_memory():
    r = MigrationReport(
        "completed",
        "seed",
        256 * MiB,
        ram_bytes=128 * MiB,
        disk_bytes=64 * MiB,
        disk_size=64 * MiB,
    )
    assert r.sent_factor == 0.6


def test_throttle_settings_pass_qemu_72_validation():
    """migrate_params_check: initial and increment in 1..99, max in
    initial..99, trigger threshold in 1..100."""
    for level in (0, 20, 50, 99):
        p = throttle_parameters(level)
        assert 1 <= p["cpu-throttle-initial"] <= p["max-cpu-throttle"] <= 99
        assert 1 <= p["cpu-throttle-increment"] <= 99
        assert 1 <= p["throttle-trigger-threshold"] <= 100
        assert p["max-cpu-throttle"] == max(level, 1)
