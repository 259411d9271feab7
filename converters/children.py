"""Child processes that must not outlive ferry: a `preexec_fn` for Popen."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when its
    parent dies, so a ferry process killed outright (no cleanup runs) takes
    its conversion child (whose guestfs appliance follows through libguestfs'
    recovery process) or its boot check's QEMU along."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
