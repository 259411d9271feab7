"""Pairing strings, kernel keys and the server's identity."""

from __future__ import annotations

import ssl

import pytest

from converters.wire.errors import PairingError
from converters.wire.pairing import Pairing, load_or_create_identity, split_address

FP = "0123456789abcdef" * 4
SECRET = "s3cr3t_-token-1234567890"


def test_the_pairing_string_round_trips():
    pairing = Pairing("10.1.2.3", 7420, FP, SECRET)
    text = str(pairing)
    assert text == f"ferry://10.1.2.3:7420/?fp={FP}&token={SECRET}"
    assert Pairing.parse(text) == pairing


def test_kernel_keys_carry_the_same_pairing():
    pairing = Pairing("kvm1.lab", 7420, FP, SECRET)
    keys = pairing.kernel_keys()
    assert keys == f"ferry.server=kvm1.lab:7420 ferry.token={SECRET}:{FP}"
    assert Pairing.parse(f"quiet {keys} ferry.mode=capture") == pairing


def test_ipv6_addresses_are_bracketed():
    pairing = Pairing("fd00::5", 7420, FP, SECRET)
    assert "[fd00::5]:7420" in str(pairing)
    assert Pairing.parse(str(pairing)) == pairing
    assert split_address("[fd00::5]:99") == ("fd00::5", 99)


@pytest.mark.parametrize(
    "text",
    [
        "http://h:1/?fp=" + FP + "&token=" + SECRET,
        "ferry://h:1/?token=" + SECRET,
        "ferry://h:1/?fp=abc&token=" + SECRET,
        "ferry://h:1/?fp=" + FP + "&token=short",
        "ferry.server=h:1 ferry.token=" + SECRET,
    ],
)
def test_bad_pairing_strings_are_refused(text):
    with pytest.raises(PairingError):
        Pairing.parse(text)


def test_the_identity_is_created_once_and_kept(tmp_path):
    first = load_or_create_identity(tmp_path / ".ferry")
    again = load_or_create_identity(tmp_path / ".ferry")
    assert first == again
    assert len(first.fingerprint) == 64
    assert (tmp_path / ".ferry" / "tls.key").stat().st_mode & 0o077 == 0
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(first.cert_path, first.key_path)  # a usable pair
