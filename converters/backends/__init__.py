"""Storage backends of the KVM side, one module each.

Every backend offers the same small file-like interface (no base class, as in
ovirt-imageio):

    size                      bytes
    read(offset, length)      -> bytes
    write(offset, data)       data is any bytes-like object
    zero(offset, length)      reads back as zeros; deallocates where it can
    flush()                   what was written survives a crash
    extents()                 -> ExtentMap of DATA and ZERO
    close()                   also a context manager

They are safe to call from several threads at once and raise ``OSError``
(``errno.ENOSPC`` when the storage is full).

``open("qcow2:///srv/x.qcow2", "r+")``, ``open("/srv/x.qcow2")`` (by suffix)
or ``open("file:///srv/x.raw")`` picks the module by scheme.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from . import nbd, qcow2, raw_file

_modules = {
    "qcow2": qcow2,
    "file": raw_file,
    "raw": raw_file,
    "nbd+unix": nbd,
}


class Unsupported(ValueError):
    pass


def _resolve(target: str | os.PathLike):
    text = os.fspath(target)
    if "://" in text:
        url = urlsplit(text)
        scheme, path = url.scheme, url.path
        if scheme == "nbd+unix":
            # nbd+unix:///?socket=/run/x.sock, the NBD URI form
            path = url.query.removeprefix("socket=")
    else:
        scheme = "qcow2" if text.endswith(".qcow2") else "file"
        path = text
    try:
        return _modules[scheme], path
    except KeyError:
        raise Unsupported(f"no storage backend for {scheme!r}") from None


def open(target: str | os.PathLike, mode: str = "r", **options):
    module, path = _resolve(target)
    return module.open(path, mode, **options)


def create(target: str | os.PathLike, size: int) -> None:
    """A new empty image of ``size`` bytes (qcow2 or sparse raw)."""
    module, path = _resolve(target)
    if not hasattr(module, "create"):
        raise Unsupported(f"cannot create {target}")
    module.create(path, size)
