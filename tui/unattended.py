"""Unattended runs on the screens: the ``ferry.*`` keys of the kernel
command line choose a flow, and the app runs it on the same screens a
technician would use.

The keys mean what converters/kernel_cmdline.py (docs/unattended.md) says
they mean; the app is given them as a dict (the live environment reads the
command line). Server choice and the default session name are those of
converters/unattended.py, which prints plain lines where nothing can be
drawn.
"""

from __future__ import annotations

from tui.flows import Flow


class UnattendedError(Exception):
    """The keys do not describe a flow; the message says which is wrong."""


def boot_keys(keys: dict[str, str]):
    """The dict as converters.kernel_cmdline parses a command line."""
    from converters import kernel_cmdline

    words = (f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in keys.items())
    return kernel_cmdline.parse(" ".join(words))


def flow_from_keys(keys: dict[str, str], include_loop: bool = False) -> Flow:
    boot = boot_keys(keys)
    if boot.fatal:
        problems = "; ".join(p.message for p in boot.fatal)
        raise UnattendedError(f"The ferry.* keys have errors: {problems}.")
    if boot.mode == "p2v":
        return _p2v(boot, include_loop)
    if boot.mode == "v2p":
        from tui.deploy_link import NOT_AVAILABLE, available

        if not available():
            raise UnattendedError(f"{NOT_AVAILABLE}: nothing was written.")
        from tui.flows import UnattendedV2PFlow

        return UnattendedV2PFlow(boot)
    raise UnattendedError(f"ferry.mode={boot.mode} is not a flow: use p2v or v2p.")


def _p2v(boot, include_loop: bool) -> Flow:
    from converters.capture import CaptureRequest
    from converters.unattended import default_name
    from tui.flows import P2VFlow

    pairings = boot.pairings()
    request = CaptureRequest(
        server=str(pairings[0]),
        disks=list(boot.disks) if boot.disks else None,
        name=boot.name or default_name(),
        include_loop=include_loop,
    )
    # No one may be at the console to press retry: wait for a server that
    # boots later than this machine, as the plain-line runner does.
    return P2VFlow(request, servers=pairings)
