"""What client and server agree on: paths, headers, limits, payload coding.

docs/protocol.md is the prose of this module. A DATA request carries up to
``MAX_CHUNK`` bytes, optionally zstd-compressed, and a checksum of the bytes
as they sit on the disk (before compression), so the receiver proves what it
writes, not what it received.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import re
import threading
from dataclasses import dataclass

import zstandard

from .errors import BadRequest, ChecksumMismatch, RangeNotSatisfiable

API = "/v1"
DEFAULT_PORT = 7420

# 8 MiB per request: large enough that per-request costs (headers, a thread
# hop, a journal entry) vanish at 1-10 Gbit/s, small enough that a client
# with four requests in flight and a server with four per session stay far
# under the 300 MiB / 200 MiB budgets of issue 3.
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
CHECKSUM_ALGORITHM = "sha256"  # SHA-NI makes it ~1.1 GB/s here; blake2b ~0.36

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
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


_M_MMAP_THRESHOLD = -3  # from malloc.h


def checksum(data) -> str:
    return f"{CHECKSUM_ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def verify(data, expected: str, offset: int) -> None:
    actual = checksum(data)
    if actual != expected:
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
    """Builds payloads; one per thread (zstd contexts are not shareable)."""

    def __init__(self, mode: str = "auto") -> None:
        if mode not in COMPRESS_MODES:
            raise ValueError(f"compress must be one of {COMPRESS_MODES}")
        self.mode = mode
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def encode(self, data) -> Payload:
        digest = checksum(data)
        length = len(data)
        if self.mode == "none" or (self.mode == "auto" and not self._pays(data)):
            return Payload(data, length, "identity", digest)
        packed = self._zstd.compress(data)
        if self.mode == "auto" and len(packed) > length * KEEP_RATIO:
            return Payload(data, length, "identity", digest)
        return Payload(packed, length, "zstd", digest)

    def _pays(self, data) -> bool:
        if len(data) <= SAMPLE_SIZE * 4:
            return True
        # The middle of a chunk is less likely than its start to be a header.
        mid = len(data) // 2
        sample = data[mid : mid + SAMPLE_SIZE]
        return len(self._zstd.compress(sample)) <= SAMPLE_SIZE * SAMPLE_RATIO


_local = threading.local()


def decode(body, encoding: str, length: int) -> bytes | memoryview:
    """The disk bytes of a request body; ``length`` bounds decompression."""
    if encoding in ("", "identity"):
        if len(body) != length:
            raise BadRequest(reason=f"body is {len(body)} bytes, range {length}")
        return body
    if encoding != "zstd":
        raise BadRequest(reason=f"unsupported Content-Encoding {encoding!r}")
    dctx = getattr(_local, "zstd", None)
    if dctx is None:
        dctx = _local.zstd = zstandard.ZstdDecompressor()
    try:
        data = dctx.decompress(body, max_output_size=length)
    except zstandard.ZstdError as e:
        raise BadRequest(reason=f"zstd: {e}") from e
    if len(data) != length:
        raise BadRequest(reason=f"zstd body is {len(data)} bytes, range {length}")
    return data


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
