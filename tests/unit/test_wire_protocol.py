"""Payload coding, checksums and ranges of the wire."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from converters.wire import protocol
from converters.wire.errors import BadRequest, ChecksumMismatch, RangeNotSatisfiable

TEXT = b"the quick brown fox jumps over the lazy dog\n" * 200_000


@pytest.mark.parametrize("mode", ["auto", "zstd", "none"])
def test_payloads_decode_to_what_was_encoded(mode):
    encoder = protocol.Encoder(mode)
    for data in (TEXT[: 8 << 20], os.urandom(1 << 20), b"x" * 100):
        payload = encoder.encode(memoryview(data))
        out = protocol.decode(payload.body, payload.encoding, payload.length)
        assert bytes(out) == data
        protocol.verify(out, payload.checksum, 0)


def test_auto_compresses_only_when_it_pays():
    encoder = protocol.Encoder("auto")
    text = encoder.encode(TEXT[: 8 << 20])
    noise = encoder.encode(os.urandom(8 << 20))
    assert text.encoding == "zstd" and text.saved > (6 << 20)
    assert noise.encoding == "identity" and noise.saved == 0


def test_the_checksum_covers_the_disk_bytes_not_the_compressed_ones():
    payload = protocol.Encoder("zstd").encode(TEXT[:65536])
    assert payload.checksum == protocol.checksum(TEXT[:65536])
    assert payload.checksum.startswith("xxh3-128:")


def test_sha256_checksums_are_still_accepted():
    data = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    protocol.verify(data, digest, 0)
    with pytest.raises(ChecksumMismatch):
        # a flipped bit, never a byte that may already be there (1 in 256)
        protocol.verify(data[:-1] + bytes([data[-1] ^ 1]), digest, 0)


def test_xxh3_checksums_are_the_canonical_hex_of_xxh3_128():
    # The value xxhsum -H2 prints for "abc" (xxHash 0.8).
    assert protocol.checksum(b"abc") == "xxh3-128:06b05ab6733a618578af5f94892f3950"


@pytest.mark.parametrize("header", ["md5:00", "deadbeef", "", "crc32:1"])
def test_an_unknown_checksum_algorithm_is_a_bad_request(header):
    with pytest.raises(BadRequest) as caught:
        protocol.verify(b"data", header, 0)
    assert "X-Ferry-Checksum" in str(caught.value)


def test_auto_stops_compressing_when_sending_is_cheaper_than_zstd():
    encoder = protocol.Encoder("auto")
    # Lines of random words: zstd -1 makes about 100-300 MB/s of them, as of
    # a disk's text files (a repeated line would compress at GB/s).
    rng = random.Random(3)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(2000)]
    chunk = " ".join(rng.choices(words, k=800_000)).encode()[: 8 << 20]
    assert encoder.encode(chunk).encoding == "zstd"  # nothing measured yet
    # A link that takes 0.2 s per GiB (zstd takes far longer per byte
    # saved): sending raw is quicker.
    for _ in range(10):
        encoder.sent(8 << 20, (8 << 20) / (5 << 30))
    assert encoder.encode(chunk).encoding == "identity"
    # A link of 1 MB/s: every saved byte is worth the CPU.
    for _ in range(10):
        encoder.sent(8 << 20, (8 << 20) / 1e6)
    assert encoder.encode(chunk).encoding == "zstd"


def test_a_flipped_byte_is_a_checksum_mismatch():
    data = bytearray(os.urandom(4096))
    digest = protocol.checksum(data)
    data[100] ^= 1
    with pytest.raises(ChecksumMismatch) as caught:
        protocol.verify(data, digest, 8192)
    assert caught.value.status == 400 and "8192" in str(caught.value)


def test_decoding_refuses_bodies_of_the_wrong_size():
    with pytest.raises(BadRequest):
        protocol.decode(b"abc", "identity", 4)
    packed = protocol.Encoder("zstd").encode(b"a" * 1000)
    with pytest.raises(BadRequest):
        protocol.decode(packed.body, "zstd", 999)  # a bomb stops at the range
    with pytest.raises(BadRequest):
        protocol.decode(b"abc", "gzip", 3)


def test_ranges_are_inclusive_http_ranges():
    assert protocol.content_range(0, 4096) == "bytes 0-4095/*"
    assert protocol.parse_content_range("bytes 4096-8191/*") == (4096, 4096)
    assert protocol.parse_range("bytes=0-99", 50) == (0, 50)
    with pytest.raises(BadRequest):
        protocol.parse_content_range("bytes=0-1")
    with pytest.raises(RangeNotSatisfiable):
        protocol.parse_range("bytes=60-99", 50)
    with pytest.raises(RangeNotSatisfiable):
        protocol.check_bounds(4096, 4097, 8192)


def test_zero_detection():
    assert protocol.is_zero(bytes(8 << 20))
    assert protocol.is_zero(memoryview(bytearray(5000)))
    assert not protocol.is_zero(b"\0" * 4095 + b"\1")


def test_names_are_safe_path_components():
    assert protocol.valid_name("pc-12.lab_3")
    for bad in ("", ".ferry", "../x", "a/b", "a b", "x" * 65):
        assert not protocol.valid_name(bad)


def test_a_zstd_body_decodes_into_the_buffer_given_and_only_to_its_range():
    out = bytearray(1 << 20)
    packed = protocol.Encoder("zstd").encode(TEXT[:65536]).body
    view = protocol.decode(packed, "zstd", 65536, out)
    assert bytes(view) == TEXT[:65536] and out[:65536] == TEXT[:65536]
    with pytest.raises(BadRequest):
        protocol.decode(packed, "zstd", 65535, out)  # decodes to more
    with pytest.raises(BadRequest):
        protocol.decode(packed, "zstd", 65537, out)  # decodes to less
    with pytest.raises(BadRequest):
        protocol.decode(b"not zstd at all", "zstd", 100, out)
