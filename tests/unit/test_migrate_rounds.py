"""QEMU's running totals turned into pre-copy rounds (migrate_rounds)."""

from __future__ import annotations

import pytest

from converters.migrate_disks import MirrorStatus
from converters.migrate_rounds import NOISE, RoundTracker, tie

MiB = 1 << 20
PAGE = 4096


def ram(sync: int, sent_pages: int, left: int, zero_pages: int = 0) -> dict:
    return {
        "dirty-sync-count": sync,
        "transferred": sent_pages * (PAGE + 8) + zero_pages * 9,
        "normal": sent_pages,
        "duplicate": zero_pages,
        "remaining": left,
        "page-size": PAGE,
    }


def test_a_round_ends_only_when_qemu_synced_its_bitmap():
    t = RoundTracker(memory=256 * MiB, start=0.0)
    assert t.update(1.0, ram(1, 1000, 200 * MiB), None) is None
    r = t.update(3.0, ram(2, 20000, 30 * MiB, zero_pages=45536), None)
    assert r is not None and r.number == 1 and r.elapsed == 3.0
    assert t.update(3.2, ram(2, 20100, 29 * MiB), None) is None


def test_dirtied_is_exact_however_late_the_reading_comes():
    """left = left_before - pages sent + newly dirtied, so a reading taken
    after QEMU already sent part of the new round changes nothing."""
    t = RoundTracker(memory=256 * MiB, start=0.0)
    t.update(3.0, ram(2, 10000, 40 * MiB, zero_pages=55536), None)
    # Round 2 sends the 40 MiB (10240 pages) and the guest dirties 8 MiB;
    # read at once, or 4 MiB (1024 pages) of round 3 later:
    prompt = RoundTracker(memory=256 * MiB, start=0.0)
    prompt.update(3.0, ram(2, 10000, 40 * MiB, zero_pages=55536), None)
    a = prompt.update(5.0, ram(3, 20240, 8 * MiB, zero_pages=55536), None)
    b = t.update(5.1, ram(3, 21264, 4 * MiB, zero_pages=55536), None)
    assert a.bytes_dirtied == b.bytes_dirtied == 8 * MiB


def test_the_first_round_starts_with_everything_dirty():
    t = RoundTracker(memory=256 * MiB, start=0.0)
    r = t.update(4.0, ram(2, 25000, 12 * MiB, zero_pages=40536), None)
    assert r.bytes_dirtied == 12 * MiB  # all of it found at the first sync
    assert r.bandwidth == pytest.approx(r.bytes_sent / 4.0)


def test_disk_mirror_joins_the_same_round():
    start_disk = MirrorStatus(copied=64 * MiB, total=64 * MiB, ready=True)
    t = RoundTracker(memory=256 * MiB, start=0.0, disk=start_disk)
    disk = MirrorStatus(copied=70 * MiB, total=73 * MiB, ready=True)
    r = t.update(2.0, ram(2, 20000, 10 * MiB, zero_pages=45536), disk)
    assert r.bytes_remaining == 10 * MiB + 3 * MiB
    memory_only = RoundTracker(memory=256 * MiB, start=0.0)
    m = memory_only.update(2.0, ram(2, 20000, 10 * MiB, zero_pages=45536), None)
    assert r.bytes_sent == m.bytes_sent + 6 * MiB
    assert r.bytes_dirtied == m.bytes_dirtied + 9 * MiB


def test_a_saturated_writer_reads_as_no_gain():
    """Hostile writer: 48 MiB left every round, give or take the guest
    kernel's own pages; the noise must not read as progress."""
    t = RoundTracker(memory=256 * MiB, start=0.0)
    t.update(3.0, ram(2, 25000, 48 * MiB, zero_pages=40536), None)
    pages, rounds = 25000, []
    for n, left in enumerate([48.4, 48.1, 48.5, 48.2], start=3):
        pages += 10000
        rounds.append(t.update(1.5 * n, ram(n, pages, int(left * MiB), 40536), None))
    previous = 48 * MiB
    for r in rounds:
        assert r.bytes_remaining == previous  # a tie: not shrinking
        assert r.bytes_dirtied == r.bytes_sent  # a tie: dirtied >= sent
        previous = r.bytes_remaining


def test_real_progress_is_not_mistaken_for_noise():
    assert tie(99, 100) == tie(101, 100) == 100
    assert tie(95, 100) == 95
    assert tie(100 * (1 - NOISE), 100) == 100
    assert tie(0, 0) == 0
