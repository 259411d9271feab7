"""The receiver's journal survives crashes without ever claiming more."""

from __future__ import annotations

import pytest

from converters.wire.journal import MAGIC, Journal, JournalError
from converters.wire.ranges import RangeSet


def test_appended_ranges_come_back_merged(tmp_path):
    path = tmp_path / "sda.journal"
    journal = Journal(path)
    journal.append([(0, 8192)])
    journal.append([(8192, 16384), (65536, 70000)])
    journal.close()

    assert list(Journal(path).load()) == [(0, 16384), (65536, 70000)]
    assert path.read_bytes().startswith(MAGIC)


def test_a_torn_last_line_is_cut_and_appends_stay_parseable(tmp_path):
    path = tmp_path / "sda.journal"
    journal = Journal(path)
    journal.append([(0, 4096)])
    journal.close()
    with open(path, "ab") as f:
        f.write(b"8192 40")  # the crash came mid-append

    again = Journal(path)
    assert list(again.load()) == [(0, 4096)]
    again.append([(4096, 8192)])
    again.close()
    assert list(Journal(path).load()) == [(0, 8192)]


def test_a_missing_journal_is_empty_and_a_foreign_file_is_refused(tmp_path):
    assert not Journal(tmp_path / "none").load()
    (tmp_path / "other").write_text("hello\n")
    with pytest.raises(JournalError):
        Journal(tmp_path / "other").load()


def test_a_long_journal_is_compacted_on_load(tmp_path, monkeypatch):
    monkeypatch.setattr("converters.wire.journal.COMPACT_SLACK", 10)
    path = tmp_path / "sda.journal"
    journal = Journal(path)
    for i in range(100):
        journal.append([(i * 4096, (i + 1) * 4096)])
    journal.close()

    committed = Journal(path).load()
    assert committed == RangeSet([(0, 100 * 4096)])
    assert len(path.read_text().splitlines()) == 2
