"""The disk a V2P deploy writes: direct I/O, exclusive, zeroed by the
device's own cheapest correct method.

``O_EXCL`` on a block device is the kernel's own "in use" check: it fails
with EBUSY while a filesystem on it is mounted or LVM/RAID holds it, and
while we hold it nobody can mount it behind our back. ``O_DIRECT`` keeps
the image out of the live environment's RAM (it runs from an initramfs)
and makes the read-back check read the device, not the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import stat
import struct

from converters.deploy_plan import DeployError

# From linux/fs.h.
BLKSSZGET = 0x1268
BLKZEROOUT = 0x127F  # _IO(0x12, 127): range must be sector-aligned
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
# One zero request at most this long, so progress stays fresh and a slow
# device (BLKZEROOUT falls back to writing zeros) never blocks for minutes.
MAX_ZERO_STEP = 1 << 30


class Target:
    def __init__(self, path: str) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC
        st_mode = os.stat(path).st_mode
        self.block = stat.S_ISBLK(st_mode)
        if self.block:
            flags |= os.O_EXCL
        try:
            self._fd = os.open(path, flags | os.O_DIRECT)
            self.direct = True
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise DeployError(
                    f"{path} is in use (mounted, or held by LVM or RAID): "
                    "nothing was written"
                ) from None
            if e.errno != errno.EINVAL:
                raise
            # A filesystem without O_DIRECT (tmpfs, in tests).
            self._fd = os.open(path, flags)
            self.direct = False
        # Unaligned heads and tails (a raw image whose size is not whole
        # sectors) go through the page cache; flush() covers both.
        self._buffered = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)
        self.sector = 512
        if self.block:
            raw = fcntl.ioctl(self._fd, BLKSSZGET, struct.pack("i", 0))
            self.sector = struct.unpack("i", raw)[0]

    def aligned(self, offset: int, length: int) -> bool:
        return offset % self.sector == 0 and length % self.sector == 0

    def write(self, offset: int, data, buf: mmap.mmap) -> None:
        """``buf``: a page-aligned buffer of at least ``len(data)`` bytes
        (each worker owns one), for the direct path. ``data`` may be a view
        of ``buf`` from its first byte (decoded in place), never another
        slice of it."""
        length = len(data)
        if not (self.direct and self.aligned(offset, length)):
            _pwrite_all(self._buffered, memoryview(data), offset)
            return
        view = memoryview(buf)[:length]
        if not (isinstance(data, memoryview) and data.obj is buf):
            view[:] = data  # else: already decoded into the buffer
        _pwrite_all(self._fd, view, offset)

    def read(self, offset: int, length: int, buf: mmap.mmap) -> memoryview:
        if not (self.direct and self.aligned(offset, length)):
            return memoryview(os.pread(self._buffered, length, offset))
        view = memoryview(buf)[:length]
        pos = 0
        while pos < length:
            n = os.preadv(self._fd, [view[pos:]], offset + pos)
            if n == 0:
                raise OSError(errno.EIO, f"{self.path}: short read at {offset}")
            pos += n
        return view

    def zero(self, offset: int, length: int) -> None:
        """Reads back as zeros afterwards. On a block device BLKZEROOUT lets
        the kernel pick the cheapest correct way the device offers (WRITE
        ZEROES with unmap allowed, else writing zero pages): never a plain
        discard, which may leave old data readable."""
        end = offset + length
        while offset < end:
            step = min(end - offset, MAX_ZERO_STEP)
            if self.block and self.aligned(offset, step):
                fcntl.ioctl(self._fd, BLKZEROOUT, struct.pack("QQ", offset, step))
            elif not self.block:
                _punch_hole(self._fd, offset, step)
            else:
                _pwrite_all(self._buffered, memoryview(bytes(step)), offset)
            offset += step

    def flush(self) -> None:
        os.fsync(self._buffered)
        os.fsync(self._fd)

    def close(self) -> None:
        for fd in (self._buffered, self._fd):
            os.close(fd)
        self._fd = self._buffered = -1

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def aligned_buffer(size: int) -> mmap.mmap:
    """Anonymous memory is page-aligned: what O_DIRECT needs."""
    return mmap.mmap(-1, size)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    pos = 0
    while pos < len(view):
        pos += os.pwritev(fd, [view[pos:]], offset + pos)


# The process's own symbols, glibc's among them: find_library("c") runs
# ldconfig, a few tenths of a second of every deploy's start.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _punch_hole(fd: int, offset: int, length: int) -> None:
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate punch hole: {os.strerror(err)}")
