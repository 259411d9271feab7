"""NBD backend: any NBD export through libnbd, in user space.

A small pool of connections lets several requests run at once: a libnbd
handle serialises the calls made on it, and its Python binding releases the
GIL, so N handles give N storage operations in flight from N threads. qemu-nbd
serves all connections from one process and one image cache, so a flush on
any connection covers writes completed on every one.

Errors come out as ``OSError`` with the NBD errno (ENOSPC when the storage
under qemu-nbd is full), so callers handle every backend the same way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
from collections.abc import Callable, Iterator

import nbd

from converters.extents import Extent, ExtentKind, ExtentMap

log = logging.getLogger(__name__)

# libnbd and the NBD protocol limit one request to 32-bit lengths; qemu also
# caps a single write at 32 MiB. Zeroing goes in 1 GiB steps (metadata only
# in qcow2), block status asks for 1 GiB at a time.
MAX_ZERO_STEP = 1 << 30
MAX_STATUS_STEP = 1 << 30


def open(socket_path: str, mode: str = "r", *, connections: int = 4, **_) -> Backend:
    return Backend(socket_path, mode, connections=connections)


@contextlib.contextmanager
def _as_oserror(op: str) -> Iterator[None]:
    try:
        yield
    except nbd.Error as e:
        # errnum is the number; errno is its name ("ENOSPC"), or None.
        code = e.errnum if isinstance(e.errnum, int) and e.errnum else errno.EIO
        raise OSError(code, f"nbd {op}: {e.string}") from e


class Backend:
    name = "nbd"

    def __init__(
        self,
        socket_path: str,
        mode: str = "r",
        *,
        connections: int = 4,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if mode not in ("r", "r+"):
            raise ValueError(f"unsupported mode {mode!r}")
        self.mode = mode
        self.socket_path = socket_path
        self._on_close = on_close
        self._pool: queue.LifoQueue[nbd.NBD] = queue.LifoQueue()
        self._handles: list[nbd.NBD] = []
        try:
            for _ in range(max(1, connections)):
                h = nbd.NBD()
                h.add_meta_context("base:allocation")
                # read_into's buffers are overwritten whole or the read
                # fails: libnbd's zeroing of them first is wasted work.
                h.set_pread_initialize(False)
                with _as_oserror("connect"):
                    h.connect_unix(socket_path)
                self._handles.append(h)
                self._pool.put(h)
        except BaseException:
            self.close()
            raise
        self._size = self._handles[0].get_size()
        log.info(
            "OPEN backend=nbd socket=%s mode=%s connections=%d size=%d",
            socket_path,
            mode,
            len(self._handles),
            self._size,
        )

    @property
    def size(self) -> int:
        return self._size

    @contextlib.contextmanager
    def _handle(self) -> Iterator[nbd.NBD]:
        h = self._pool.get()
        try:
            yield h
        finally:
            self._pool.put(h)

    def read(self, offset: int, length: int) -> bytes:
        with self._handle() as h, _as_oserror("read"):
            return h.pread(length, offset)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fills ``view`` (writable) from ``offset``: a reader with its own
        buffers skips pread's fresh allocation per call (and libnbd's
        zeroing of it), page faults included."""
        with self._handle() as h, _as_oserror("read"):
            cookie = h.aio_pread(nbd.Buffer.from_buffer(view), offset)
            while not h.aio_command_completed(cookie):
                h.poll(-1)

    def write(self, offset: int, data) -> None:
        self._writable()
        with self._handle() as h, _as_oserror("write"):
            h.pwrite(data, offset)

    def zero(self, offset: int, length: int) -> None:
        """Reads back as zeros afterwards. No NO_HOLE flag: the server may
        punch holes (qemu-nbd --discard=unmap makes qcow2 clusters zero
        clusters without data), which is the point; zeros are never sent as
        data."""
        self._writable()
        end = offset + length
        with self._handle() as h, _as_oserror("zero"):
            while offset < end:
                step = min(end - offset, MAX_ZERO_STEP)
                h.zero(step, offset)
                offset += step

    def flush(self) -> None:
        if self.mode == "r":
            return
        with self._handle() as h, _as_oserror("flush"):
            h.flush()

    def extents(self) -> ExtentMap:
        """DATA where the image holds data, ZERO where it reads as zeros
        (holes and zero clusters), from NBD block status."""
        out: list[Extent] = []
        pos = 0
        with self._handle() as h, _as_oserror("block status"):
            if not h.can_meta_context("base:allocation"):
                return ExtentMap.whole(self._size)
            while pos < self._size:
                entries: list[int] = []

                def collect(context, _offset, ents, _err, entries=entries):
                    if context == "base:allocation":
                        entries.extend(ents)
                    return 0

                h.block_status(min(self._size - pos, MAX_STATUS_STEP), pos, collect)
                for i in range(0, len(entries), 2):
                    length = min(entries[i], self._size - pos)
                    if length <= 0:
                        break
                    zero = entries[i + 1] & nbd.STATE_ZERO
                    kind = ExtentKind.ZERO if zero else ExtentKind.DATA
                    out.append(Extent(pos, length, kind))
                    pos += length
                if not entries:
                    raise OSError(errno.EPROTO, "nbd block status: empty reply")
        return ExtentMap(self._size, out).normalized()

    def close(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            with contextlib.suppress(nbd.Error):
                h.shutdown()
        # libnbd closes a handle when its last reference goes.
        self._pool = queue.LifoQueue()
        if handles:
            log.info("CLOSE backend=nbd socket=%s", self.socket_path)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def _writable(self) -> None:
        if self.mode == "r":
            raise OSError(errno.EBADF, "backend opened read-only")

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
