"""`ferry migrate`: its arguments, endpoints and rates, and its errors."""

from __future__ import annotations

import argparse

import pytest

from converters.cli import FerryError
from converters.migrate_command import default_uri, options_from, parse_rate, register
from converters.migrate_endpoint import Endpoint


def parse(*argv: str):
    parser = argparse.ArgumentParser(prog="ferry")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["migrate", *argv])


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("32M", 32 << 20),
        ("32MiB/s", 32 << 20),
        ("1G", 1 << 30),
        ("512k", 512 << 10),
        ("1000", 1000),
        ("100Mbit", 12_500_000),
        ("1Gbps", 125_000_000),
    ],
)
def test_rates_are_binary_bytes_or_decimal_bits(text, rate):
    assert parse_rate(text) == rate


def test_a_rate_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="100Mbit"):
        parse_rate("fast")


def test_endpoints_are_unix_sockets_or_host_and_port():
    assert Endpoint.parse("qmp:/run/vm.qmp").address == "/run/vm.qmp"
    assert Endpoint.parse("qmp:kvm2:4444").address == ("kvm2", 4444)
    assert Endpoint.parse("qmp:[fd00::2]:4444").address == ("fd00::2", 4444)
    assert Endpoint.parse("qmp:/run/vm.qmp").local
    with pytest.raises(ValueError, match="qmp:/path"):
        Endpoint.parse("vm1")


def test_streams_and_nbd_default_beside_the_destination():
    local, remote = Endpoint.parse("qmp:/run/b.qmp"), Endpoint.parse("qmp:kvm2:4444")
    assert default_uri(local) == "unix:/run/b.qmp.migrate"
    assert default_uri(remote) == "tcp:kvm2:49152"
    assert local.default_nbd() == "unix:/run/b.qmp.nbd"
    assert remote.default_nbd() == "tcp:kvm2:10809"


def test_options_carry_the_arguments():
    o = options_from(
        parse(
            "qmp:/a",
            "--to",
            "qmp:/b",
            "--downtime",
            "100",
            "--bandwidth",
            "64M",
            "--storage",
            "copy",
            "--policy",
            "qemu",
            "--auto-converge",
            "--timeout",
            "60",
        )
    )
    assert (o.uri, o.downtime, o.bandwidth) == ("unix:/b.migrate", 0.1, 64 << 20)
    assert (o.storage, o.policy, o.auto_converge, o.timeout) == (
        "copy",
        "qemu",
        True,
        60,
    )
    assert o.label == "qemu+auto-converge"


def test_auto_converge_goes_with_the_qemu_policy_only():
    with pytest.raises(FerryError, match="--policy qemu"):
        options_from(parse("qmp:/a", "--to", "qmp:/b", "--auto-converge"))


def test_an_unreachable_qemu_is_a_one_line_error(tmp_path):
    args = parse(f"qmp:{tmp_path}/none.qmp", "--to", f"qmp:{tmp_path}/b.qmp")
    with pytest.raises(FerryError, match="cannot reach the source"):
        args.func(args)
