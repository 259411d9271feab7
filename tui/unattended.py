"""Unattended runs: the ``ferry.*`` keys of the kernel command line choose
a flow, and the app runs it on the same screens a technician would use.

Parsing /proc/cmdline belongs to the live environment; this module takes
the keys already split (DESIGN.md names them).
"""

from __future__ import annotations

from tui.flows import Flow


class UnattendedError(Exception):
    """The keys do not describe a flow; the message says which is wrong."""


def flow_from_keys(keys: dict[str, str], include_loop: bool = False) -> Flow:
    mode = keys.get("ferry.mode", "")
    if mode == "p2v":
        return _p2v(keys, include_loop)
    if mode == "v2p":
        from tui.deploy_link import NOT_AVAILABLE, available

        if not available():
            raise UnattendedError(f"{NOT_AVAILABLE}: nothing was written.")
        raise UnattendedError(
            "unattended V2P is not wired to converters.deploy yet: nothing was written."
        )
    raise UnattendedError(f"ferry.mode={mode} is not a flow: use p2v or v2p.")


def _p2v(keys: dict[str, str], include_loop: bool) -> Flow:
    from converters.capture import CaptureRequest
    from converters.wire.errors import PairingError
    from converters.wire.pairing import Pairing
    from tui.flows import P2VFlow

    try:
        pairing = Pairing.from_kernel(keys["ferry.server"], keys["ferry.token"])
    except KeyError as e:
        raise UnattendedError(
            f"ferry.mode=p2v needs {e.args[0]}= on the kernel command line."
        ) from None
    except PairingError as e:
        raise UnattendedError(f"{e}.") from None
    disks = keys.get("ferry.disks", "all")
    return P2VFlow(
        CaptureRequest(
            server=str(pairing),
            disks=None if disks == "all" else disks.split(","),
            # The VM is named after the machine unless the keys say otherwise.
            name=keys.get("ferry.hostname") or None,
            include_loop=include_loop,
        )
    )
