"""--bandwidth: rates and the token bucket."""

from __future__ import annotations

import time

import pytest

from converters.wire.throttle import TokenBucket, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("1000", 1000),
        ("50M", 50e6),
        ("50MB", 50e6),
        ("2MiB", 2 * 2**20),
        ("1Gbit", 125e6),
        ("100mbps", 12.5e6),
        ("1.5G", 1.5e9),
    ],
)
def test_rates_parse(text, rate):
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["", "fast", "-5M", "0", "10 parsecs"])
def test_bad_rates_are_refused(text):
    with pytest.raises(ValueError):
        parse_rate(text)


def test_the_bucket_holds_the_rate_after_its_burst():
    bucket = TokenBucket(4 << 20, burst_seconds=0.1)  # 4 MiB/s
    started = time.monotonic()
    sent = sum(len(piece) for piece in bucket.slices(bytes(2 << 20)))
    elapsed = time.monotonic() - started
    assert sent == 2 << 20
    assert 0.35 <= elapsed <= 2.0  # 0.5 s for 2 MiB, less the burst; busy CI
