"""``ferry serve`` plugs into the CLI with ``register(subparsers)``."""

from __future__ import annotations

import argparse
from pathlib import Path

from converters.wire import serve_command


def test_register_adds_serve_with_its_options():
    parser = argparse.ArgumentParser(prog="ferry")
    serve_command.register(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["serve", "--storage", "/srv/ferry"])

    assert args.func is serve_command.main
    assert args.storage == Path("/srv/ferry")
    assert args.listen == "0.0.0.0:7420"
    args = parser.parse_args(["serve", "--storage", "s", "--listen", "[::1]:9000"])
    assert args.listen == "[::1]:9000"


def test_a_bad_listen_address_is_one_line(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="ferry")
    serve_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--storage", str(tmp_path), "--listen", "h:x"])

    assert serve_command.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ferry serve: ") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_the_boot_check_setting_reaches_the_servers_settings(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="ferry")
    serve_command.register(parser.add_subparsers(dest="command"))
    storage = ["serve", "--storage", str(tmp_path)]
    args = parser.parse_args([*storage, "--check-boot", "--check-boot-timeout", "600"])
    settings = serve_command._settings(args)
    assert (settings.convert, settings.check_boot) == (True, True)
    assert settings.check_boot_timeout == 600.0
    assert not serve_command._settings(parser.parse_args(storage)).check_boot
    # a boot check needs conversions: refused in one line, nothing written
    args = parser.parse_args([*storage, "--no-convert", "--check-boot"])
    assert serve_command.main(args) == 2
    err = capsys.readouterr().err
    assert err == "ferry serve: --check-boot checks conversions: drop --no-convert\n"
    assert not list(tmp_path.iterdir())
