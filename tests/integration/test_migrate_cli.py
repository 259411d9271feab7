"""`ferry migrate` end to end on the test guest: a line per round, a table
at the end, exit status 0, and the guest running on the destination."""

from __future__ import annotations

import argparse
import re

import pytest

from converters.migrate_command import register
from tests.harness.migration_guest import Guest, have_tools
from tests.harness.migration_link import Link
from tests.harness.migration_run import LINK, WORKLOADS

MISSING = have_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def ferry(*argv: str) -> int:
    """`ferry migrate ...` as converters.cli runs it, without depending on
    which commands the CLI lists."""
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_ferry_migrate_prints_rounds_and_a_summary(tmp_path, capsys):
    src = Guest(tmp_path, "src", WORKLOADS["moderate"])
    dst = Guest(tmp_path, "dst", WORKLOADS["moderate"], incoming=True)
    try:
        src.start()
        assert src.wait_for("FERRY-WRITER t=", 90, count=2), src.console()
        dst.start()
        incoming = tmp_path / "incoming.sock"
        with Link(tmp_path / "link.sock", incoming, LINK) as link:
            status = ferry(
                "migrate",
                f"qmp:{src.qmp_path}",
                "--to",
                f"qmp:{dst.qmp_path}",
                "--uri",
                link.uri,
                "--listen",
                f"unix:{incoming}",
                "--bandwidth",
                "32M",
                "--downtime",
                "300",
            )
        out, err = capsys.readouterr()
        assert status == 0, out + err
        assert re.search(r"^round  1 .* -> \w+", err, re.M), err
        assert re.search(r"^status\s+completed$", out, re.M), out
        assert re.search(r"^downtime\s+\d+ ms", out, re.M), out
        assert dst.wait_for("FERRY-WRITER t=", 10, count=2), dst.console()
    finally:
        src.stop()
        dst.stop()
