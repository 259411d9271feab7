"""`ferry COMMAND` imports that command's module only: a deploy or capture
does not pay for the TUI's or libvirt's imports at its start, and a missing
binding of another command cannot take it down."""

from __future__ import annotations

import subprocess
import sys

from converters import cli

PROBE = """
import contextlib, io, sys
from converters import cli
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        cli.main({argv!r})
    except SystemExit:
        pass
loaded = sorted(set(cli.COMMAND_MODULES) & set(sys.modules))
print(" ".join(loaded) or "-")
print("textual" in sys.modules)
"""


def loaded_after(*argv: str) -> tuple[list[str], bool]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=list(argv))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return out[0].split() if out[0] != "-" else [], out[1] == "True"


def test_a_command_imports_its_own_module_and_no_other():
    modules, textual = loaded_after("-v", "deploy", "--help")
    assert modules == ["converters.deploy_command"]
    assert not textual


def test_help_without_a_command_lists_every_command():
    modules, _ = loaded_after("--help")
    assert sorted(modules) == sorted(cli.COMMAND_MODULES)


def test_the_command_is_the_first_word_that_is_no_option():
    assert cli.named_command(["-v", "capture", "--live", "serve"]) == "capture"
    assert cli.named_command(["--version"]) is None
    assert cli.named_command(["nosuch", "deploy"]) is None
