"""What client and server agree on: paths, headers, limits, payload coding.

docs/protocol.md is the prose of this module. A DATA request carries up to
``MAX_CHUNK`` bytes, optionally zstd-compressed, and a checksum of the bytes
as they sit on the disk (before compression), so the receiver proves what it
writes, not what it received.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import threading
import time
from dataclasses import dataclass

import zstandard

try:
    import xxhash
except ImportError:  # a client without it still speaks sha256
    xxhash = None

from .errors import BadRequest, ChecksumMismatch, RangeNotSatisfiable

API = "/v1"
DEFAULT_PORT = 7420

# 8 MiB per request: large enough that per-request costs (headers, a thread
# hop, a journal entry) vanish at 1-10 Gbit/s, small enough that a client
# with four requests in flight and a server with four per session stay far
# under the capture bench's 300 MiB client / 200 MiB server memory budgets
# (docs/bench.md).
CHUNK_SIZE = 8 << 20
MAX_CHUNK = 8 << 20
# A zstd frame of incompressible data is a little larger than the data; the
# client sends compressed bodies only when they are smaller, but the server
# takes this much more than the range.
BODY_SLACK = 64 << 10

# Zero requests carry no payload, but one request is one storage operation:
# 1 GiB keeps each under a second on qcow2 (metadata only) while a 1 TiB
# empty region still needs only 1024 requests.
MAX_ZERO = 1 << 30

CHECKSUM_HEADER = "X-Ferry-Checksum"
# The header says which algorithm (``ALG:HEX``); the receiver accepts each of
# these. TLS already guards against tampering: the checksum catches accidents
# between the two disks (buffer reuse, compression, memory), which a 128-bit
# non-cryptographic hash does as well as SHA-256. Measured here per CPU
# second: xxh3-128 6.8 GB/s, sha256 (SHA-NI) 1.1-1.4 GB/s, blake2b 0.36; at
# 1.4 GB per capture on both ends, sha256 was 2.5 of ferry's 14 CPU seconds.
_HASHES = {"sha256": lambda data: hashlib.sha256(data).hexdigest()}
if xxhash is not None:
    _HASHES["xxh3-128"] = xxhash.xxh3_128_hexdigest
CHECKSUM_ALGORITHMS = tuple(_HASHES)
CHECKSUM_ALGORITHM = "xxh3-128" if xxhash is not None else "sha256"

COMPRESS_MODES = ("auto", "zstd", "none")
ZSTD_LEVEL = 1  # level 1 already takes ~200 MiB/s/core on text-like data
# auto: compress a 64 KiB sample first; random data (encrypted, already
# compressed) then costs a 64 KiB trial instead of a full 8 MiB one.
SAMPLE_SIZE = 64 << 10
SAMPLE_RATIO = 0.9
# A compressed chunk is kept only if it saves at least 1/16 of the bytes.
KEEP_RATIO = 15 / 16

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ZEROS = bytes(MAX_CHUNK)


def bound_heap() -> None:
    """Make glibc return large buffers to the system when they are freed.

    8 MiB buffers (zstd output) come and go in several threads; once glibc's
    adaptive mmap threshold has risen past their size they are carved from
    per-thread arenas that keep the memory, and the process grows with its
    thread count. A fixed 1 MiB threshold turns each into an mmap again.
    """
    try:
        libc = ctypes.CDLL(None)  # find_library would run ldconfig
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


_M_MMAP_THRESHOLD = -3  # from malloc.h


def checksum(data, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """``ALG:HEX`` of ``data``; hex in the algorithm's canonical byte order
    (what ``sha256sum`` and ``xxhsum -H2`` print)."""
    return f"{algorithm}:{_HASHES[algorithm](data)}"


def checksum_algorithm(value: str) -> str:
    """The algorithm a checksum header names; a 400 for any other."""
    algorithm, sep, _ = value.partition(":")
    if not sep or algorithm not in _HASHES:
        raise BadRequest(
            reason=f"{CHECKSUM_HEADER} {value[:40]!r} is not ALG:HEX with ALG "
            f"one of {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    return algorithm


def verify(data, expected: str, offset: int) -> None:
    """Check ``data`` against ``expected``, in the algorithm it names."""
    actual = checksum(data, checksum_algorithm(expected))
    if actual != expected.lower():
        raise ChecksumMismatch(
            offset=offset, length=len(data), expected=expected, actual=actual
        )


def is_zero(data) -> bool:
    # bytes.startswith is a memcmp; comparing memoryviews goes item by item
    # and runs at a hundredth of the speed.
    return len(data) <= len(ZEROS) and ZEROS.startswith(data)


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body: ``body`` as sent, ``length`` bytes on the disk."""

    body: bytes | memoryview
    length: int
    encoding: str  # "identity" or "zstd"
    checksum: str

    @property
    def saved(self) -> int:
        return self.length - len(self.body)


class Encoder:
    """Builds payloads; one per thread (zstd contexts are not shareable).

    ``auto`` compresses a chunk only when its sample shrinks and, once the
    sender reports how long its requests take (``sent``), only when the
    time compressing costs is less than the time sending the saved bytes
    would cost: with a slow link every compressible chunk is compressed,
    with a fast link and a busy CPU (or a fast link and slow zstd) none is.
    The sender's time per chunk is what its throughput depends on (each
    sender handles one chunk at a time), so this is the time that counts.
    """

    def __init__(self, mode: str = "auto") -> None:
        if mode not in COMPRESS_MODES:
            raise ValueError(f"compress must be one of {COMPRESS_MODES}")
        self.mode = mode
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        # Seconds per byte, moving averages (whole chunks by the wall clock,
        # so a CPU shared with other work shows as the slower compression
        # it is).
        self._zstd_cost: float | None = None
        self._send_cost: float | None = None

    def sent(self, wire_bytes: int, seconds: float) -> None:
        """One request of ``wire_bytes`` took ``seconds`` from first byte
        sent to reply received."""
        if wire_bytes >= SAMPLE_SIZE:
            self._send_cost = _average(self._send_cost, seconds / wire_bytes)

    def encode(self, data) -> Payload:
        digest = checksum(data)
        length = len(data)
        if self.mode == "none" or (self.mode == "auto" and not self._pays(data)):
            return Payload(data, length, "identity", digest)
        started = time.perf_counter()
        packed = self._zstd.compress(data)
        self._zstd_cost = _average(
            self._zstd_cost, (time.perf_counter() - started) / length
        )
        if self.mode == "auto" and len(packed) > length * KEEP_RATIO:
            return Payload(data, length, "identity", digest)
        return Payload(packed, length, "zstd", digest)

    def _pays(self, data) -> bool:
        if len(data) <= SAMPLE_SIZE * 4:
            return True
        # The middle of a chunk is less likely than its start to be a header.
        mid = len(data) // 2
        sample = data[mid : mid + SAMPLE_SIZE]
        # CPU time, not wall: a sample takes well under a millisecond, so one
        # preemption would make it look ten times slower than it is.
        started = time.thread_time()
        ratio = len(self._zstd.compress(sample)) / len(sample)
        cost = (time.thread_time() - started) / len(sample)
        # Samples keep the estimate fresh while chunks go out raw.
        self._zstd_cost = _average(self._zstd_cost, cost)
        if ratio > SAMPLE_RATIO:
            return False
        if self._send_cost is None:
            return True  # nothing measured yet: bytes are what a link lacks
        return self._zstd_cost < self._send_cost * (1 - ratio)


_reply_encoders = threading.local()


def encode_reply(data: bytes, compress: bool) -> Payload:
    """A read's reply body, from the calling thread's own encoder (the
    servers encode in their worker threads)."""
    mode = "auto" if compress else "none"
    encoder = getattr(_reply_encoders, mode, None)
    if encoder is None:
        encoder = Encoder(mode)
        setattr(_reply_encoders, mode, encoder)
    return encoder.encode(data)


def _average(old: float | None, new: float) -> float:
    # Weight 1/4: follows a change of link or load within a few chunks
    # (a few hundred ms) without flapping on one slow request.
    return new if old is None else old + (new - old) / 4


_local = threading.local()


def decode(body, encoding: str, length: int, out=None) -> bytes | memoryview:
    """The disk bytes of a request body; ``length`` bounds decompression.
    With ``out`` (writable, at least ``length`` bytes) a zstd body is
    decoded into it: a server decoding into pooled buffers skips a fresh
    8 MiB allocation per request (2048 page faults and zeroed pages, a
    tenth of its CPU time in the capture bench)."""
    if encoding in ("", "identity"):
        if len(body) != length:
            raise BadRequest(reason=f"body is {len(body)} bytes, range {length}")
        return body
    if encoding != "zstd":
        raise BadRequest(reason=f"unsupported Content-Encoding {encoding!r}")
    dctx = getattr(_local, "zstd", None)
    if dctx is None:
        dctx = _local.zstd = zstandard.ZstdDecompressor()
    if out is not None:
        return _decode_into(dctx, body, memoryview(out)[:length])
    try:
        data = dctx.decompress(body, max_output_size=length)
    except zstandard.ZstdError as e:
        raise BadRequest(reason=f"zstd: {e}") from e
    if len(data) != length:
        raise BadRequest(reason=f"zstd body is {len(data)} bytes, range {length}")
    return data


def _decode_into(dctx, body, view: memoryview) -> memoryview:
    length = len(view)
    pos = 0
    try:
        reader = dctx.stream_reader(body, read_size=max(1, len(body)))
        while pos < length:
            n = reader.readinto(view[pos:])
            if not n:
                break
            pos += n
        longer = pos == length and reader.read(1)
    except zstandard.ZstdError as e:
        raise BadRequest(reason=f"zstd: {e}") from e
    if pos != length or longer:
        got = f"{pos}" if not longer else f"more than {length}"
        raise BadRequest(reason=f"zstd body is {got} bytes, range {length}")
    return view


# Ranges. HTTP ranges are inclusive: "bytes 0-4095/*" is 4096 bytes.

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


def content_range(offset: int, length: int, size: int | None = None) -> str:
    return f"bytes {offset}-{offset + length - 1}/{'*' if size is None else size}"


def parse_content_range(value: str | None) -> tuple[int, int]:
    """``(offset, length)`` of a PUT's Content-Range."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise BadRequest(reason=f"Content-Range {value!r} is not 'bytes A-B/*'")
    first, last = int(m[1]), int(m[2])
    if last < first:
        raise BadRequest(reason=f"Content-Range {value!r} is empty")
    return first, last - first + 1


def range_header(offset: int, length: int) -> str:
    return f"bytes={offset}-{offset + length - 1}"


def parse_range(value: str | None, size: int) -> tuple[int, int]:
    """``(offset, length)`` of a GET's Range, one closed range only."""
    m = _RANGE.match(value or "")
    if not m:
        raise RangeNotSatisfiable(reason=f"Range {value!r} is not 'bytes=A-B'")
    first, last = int(m[1]), min(int(m[2]), size - 1)
    if first > last:
        raise RangeNotSatisfiable(reason=f"Range {value!r} outside {size} bytes")
    return first, last - first + 1


def check_bounds(offset: int, length: int, size: int) -> None:
    if offset < 0 or length <= 0 or offset + length > size:
        raise RangeNotSatisfiable(
            reason=f"{offset}+{length} is outside the disk of {size} bytes"
        )


def session_path(session: str) -> str:
    return f"{API}/sessions/{session}"


def disk_path(session: str, disk: str) -> str:
    return f"{API}/sessions/{session}/disks/{disk}"


def image_path(image: str, disk: str) -> str:
    """A disk of an image ``ferry serve`` offers for V2P (wire/images.py)."""
    return f"{API}/images/{image}/disks/{disk}"
