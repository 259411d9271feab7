"""How the live side's NICs get their addresses: DHCP, or a static address
with prefix, gateway and DNS servers typed by the technician.

The live image runs systemd-networkd (image/elements/ferry-network), so a
choice becomes a `.network` file in /run/systemd/network (volatile: a
reboot forgets it, as a live environment should) followed by `networkctl
reload` and `networkctl reconfigure`. Where networkd is not running (a
container, a rescue shell, a network namespace) the same choice is applied
with `ip` commands, DHCP through dhclient.

Everything is checked before anything is touched: a bad address is a
one-line NetworkConfigError and the NIC keeps what it had.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/systemd/network")
NETWORKD_STATE = Path("/run/systemd/netif/state")
# Sorted before the image's 80-ferry-wired.network, which matches every
# wired NIC: networkd uses the first file that matches a link.
PREFIX = "10-ferry-"
COMMAND_TIMEOUT = 30
DHCLIENT_DIR = Path("/run/ferry/dhclient")


class NetworkConfigError(ValueError):
    """A configuration that cannot be applied; the message is one sentence."""


@dataclass(frozen=True)
class NicConfig:
    nic: str
    method: str  # "dhcp" or "static"
    address: str = ""  # "10.0.0.5/24" (static only)
    gateway: str = ""  # may be empty: a flat network
    dns: tuple[str, ...] = ()

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)


def dhcp(nic: str) -> NicConfig:
    return NicConfig(nic, "dhcp")


def static(nic: str, address: str, gateway: str = "", dns: str = "") -> NicConfig:
    """A static configuration from what the technician typed; ``dns`` is a
    list separated by spaces or commas. Raises NetworkConfigError."""
    address = address.strip()
    if "/" not in address:
        raise NetworkConfigError(
            f"address {address or '(empty)'!r} needs a prefix length, "
            "e.g. 192.168.1.20/24"
        )
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise NetworkConfigError(f"{address!r} is not an address/prefix") from None
    net = iface.network
    # /31 and /32 have no network or broadcast address to avoid.
    special = {net.network_address: "network", net.broadcast_address: "broadcast"}
    if iface.version == 4 and net.prefixlen < 31 and iface.ip in special:
        raise NetworkConfigError(
            f"{iface.ip} is the {special[iface.ip]} address of {net}: "
            "choose a host address"
        )
    gateway = gateway.strip()
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise NetworkConfigError(f"gateway {gateway!r} is not an address") from None
        if gw.version != iface.version or gw not in net:
            raise NetworkConfigError(f"gateway {gw} is not in {net}")
        if gw == iface.ip:
            raise NetworkConfigError(f"gateway {gw} is this machine's own address")
    servers = []
    for word in dns.replace(",", " ").split():
        try:
            servers.append(str(ipaddress.ip_address(word)))
        except ValueError:
            raise NetworkConfigError(f"DNS server {word!r} is not an address") from None
    return NicConfig(nic, "static", str(iface), gateway, tuple(servers))


def check_nic(nic: str, sys_net: Path = Path("/sys/class/net")) -> None:
    if not nic or "/" in nic or not (sys_net / nic).exists():
        known = ", ".join(sorted(p.name for p in sys_net.iterdir() if p.name != "lo"))
        raise NetworkConfigError(f"no NIC {nic!r} (NICs: {known or 'none'})")


def networkd_unit(config: NicConfig) -> str:
    """The `.network` file for one NIC."""
    lines = ["# Written by ferry (the console's Network screen).", "[Match]"]
    lines += [f"Name={config.nic}", "", "[Network]"]
    if config.method == "dhcp":
        lines += ["DHCP=yes", "IPv6AcceptRA=yes", "", "[DHCPv4]"]
        # As the image's default file: reservations are made by MAC.
        lines += ["ClientIdentifier=mac", "UseHostname=no"]
    else:
        lines += [f"Address={config.address}"]
        if config.gateway:
            lines += [f"Gateway={config.gateway}"]
        lines += [f"DNS={d}" for d in config.dns]
        # A static address must not be joined by a leased one.
        lines += ["DHCP=no", "IPv6AcceptRA=no"]
    return "\n".join(lines) + "\n"


def networkd_running(state: Path = NETWORKD_STATE) -> bool:
    # networkd writes its state file while it runs; /run starts empty.
    return state.exists() and shutil.which("networkctl") is not None


def apply(
    config: NicConfig,
    *,
    use_networkd: bool | None = None,
    run_dir: Path = RUN_DIR,
    resolv_conf: Path = Path("/etc/resolv.conf"),
) -> str:
    """Configure the NIC; returns how ("networkd" or "ip"). Raises
    NetworkConfigError before touching anything when the NIC is unknown,
    and when a command fails (its own message, one line)."""
    check_nic(config.nic)
    if config.method not in ("dhcp", "static"):
        raise NetworkConfigError(f"unknown method {config.method!r}")
    if use_networkd is None:
        use_networkd = networkd_running()
    if use_networkd:
        _apply_networkd(config, run_dir)
        return "networkd"
    _apply_ip(config, resolv_conf)
    return "ip"


def _apply_networkd(config: NicConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{PREFIX}{config.nic}.network"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(networkd_unit(config))
    tmp.replace(path)
    _run(["networkctl", "reload"])
    # reload alone leaves a link that is already configured as it is.
    _run(["networkctl", "reconfigure", config.nic])


def _dhclient(nic: str, *args: str) -> list[str]:
    # Its own pid and lease files per NIC: the default pid file is shared by
    # every dhclient of the machine, and `-r` would stop whichever it names.
    state = DHCLIENT_DIR / nic
    return ["dhclient", *args, "-pf", f"{state}.pid", "-lf", f"{state}.leases", nic]


def _apply_ip(config: NicConfig, resolv_conf: Path) -> None:
    nic = config.nic
    _run(["ip", "link", "set", "dev", nic, "up"])
    # A leased address would stay beside a static one (and its client
    # would renew it): stop the client ferry started for this NIC.
    if (DHCLIENT_DIR / f"{nic}.pid").exists():
        _run(_dhclient(nic, "-r"), check=False)
    _run(["ip", "address", "flush", "dev", nic, "scope", "global"])
    if config.method == "dhcp":
        if not shutil.which("dhclient"):
            raise NetworkConfigError(
                "DHCP needs systemd-networkd or dhclient, and neither is here"
            )
        DHCLIENT_DIR.mkdir(parents=True, exist_ok=True)
        _run(_dhclient(nic, "-1"), timeout=60)
        return
    _run(["ip", "address", "add", config.address, "dev", nic])
    if config.gateway:
        _run(["ip", "route", "replace", "default", "via", config.gateway, "dev", nic])
    if config.dns:
        text = "# Written by ferry (the console's Network screen).\n"
        text += "".join(f"nameserver {d}\n" for d in config.dns)
        resolv_conf.write_text(text)


def _run(argv: list[str], check: bool = True, timeout: float = COMMAND_TIMEOUT):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NetworkConfigError(
            f"{argv[0]} did not finish in {timeout:.0f} s"
        ) from None
    except OSError as e:
        raise NetworkConfigError(f"cannot run {argv[0]}: {e.strerror}") from None
    if check and done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise NetworkConfigError(
            f"{' '.join(argv[:3])} failed: {why[-1] if why else done.returncode}"
        )
    return done
