"""Raw backend: a plain (sparse) file, or a block device.

Zeroing punches holes in files (``fallocate(PUNCH_HOLE)``) and falls back to
writing zeros in bounded steps where the filesystem or device cannot, so the
result always reads back as zeros. Allocation comes from SEEK_DATA/SEEK_HOLE.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat

from converters.extents import Extent, ExtentKind, ExtentMap

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# The process's own symbols, glibc's among them (find_library runs ldconfig)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_longlong,
    ctypes.c_longlong,
]

# Fallback zeroing writes at most this much per call, from one shared buffer.
ZERO_STEP = 8 << 20
_ZEROS = bytes(ZERO_STEP)


def create(path: str | os.PathLike, size: int) -> None:
    """A new sparse file of ``size`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def open(path: str | os.PathLike, mode: str = "r", **_) -> Backend:
    return Backend(os.fspath(path), mode)


class Backend:
    name = "file"

    def __init__(self, path: str, mode: str = "r") -> None:
        if mode not in ("r", "r+"):
            raise ValueError(f"unsupported mode {mode!r}")
        self.path = path
        self.mode = mode
        self._fd = os.open(path, os.O_RDONLY if mode == "r" else os.O_RDWR)
        self._block = stat.S_ISBLK(os.fstat(self._fd).st_mode)
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        log.info("OPEN backend=file path=%s mode=%s size=%d", path, mode, self._size)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        chunks = []
        end = min(offset + length, self._size)
        while offset < end:
            data = os.pread(self._fd, end - offset, offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
        return b"".join(chunks)

    def write(self, offset: int, data) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n

    def zero(self, offset: int, length: int) -> None:
        if not self._block:
            res = _libc.fallocate(
                self._fd,
                _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            )
            if res == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, os.strerror(err), self.path)
        end = offset + length
        while offset < end:
            step = min(end - offset, ZERO_STEP)
            self.write(offset, memoryview(_ZEROS)[:step])
            offset += step

    def flush(self) -> None:
        os.fsync(self._fd)

    def extents(self) -> ExtentMap:
        """DATA over allocated parts, ZERO over holes; a block device (or a
        filesystem without SEEK_DATA) is all DATA."""
        if self._block:
            return ExtentMap.whole(self._size)
        out: list[Extent] = []
        pos = 0
        try:
            while pos < self._size:
                try:
                    data = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                        raise
                    data = self._size
                if data > pos:
                    out.append(Extent(pos, data - pos, ExtentKind.ZERO))
                if data >= self._size:
                    break
                hole = min(os.lseek(self._fd, data, os.SEEK_HOLE), self._size)
                out.append(Extent(data, hole - data, ExtentKind.DATA))
                pos = hole
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return ExtentMap.whole(self._size)
        return ExtentMap(self._size, out).normalized()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
