"""Files every test machine carries: the boot marker, its network
configuration, grub defaults and the live data whose checksums later tests
verify. Written into an unpacked Debian tree before it becomes a disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MARKER_SCRIPT = r"""#!/bin/sh
# Prints the one line the ferry tests wait for on the serial console.
fw=bios
[ -d /sys/firmware/efi ] && fw=uefi
root=$(findmnt -n -o SOURCE /)
nic=none
mac=none
for dev in /sys/class/net/*; do
    name=${dev##*/}
    [ "$name" = lo ] && continue
    nic=$name
    mac=$(cat "$dev/address")
    break
done
# The address shows whether the network configuration found its interface.
addr=none
tries=0
while [ "$tries" -lt 15 ] && [ "$nic" != none ]; do
    a=$(ip -4 -o addr show dev "$nic" 2>/dev/null | awk '{print $4; exit}')
    if [ -n "$a" ]; then addr=$a; break; fi
    sleep 1
    tries=$((tries + 1))
done
# Whether the live files still match the checksums taken when it was built.
data=none
if [ -r /var/lib/ferry-test/manifest.sha256 ]; then
    if sha256sum -c --quiet /var/lib/ferry-test/manifest.sha256 >/dev/null 2>&1
    then data=ok; else data=bad; fi
fi
extra=
[ -r /etc/ferry-marker.fields ] && extra=" $(sh /etc/ferry-marker.fields)"
echo "FERRY-BOOTED host=$(hostname) firmware=$fw root=$root nic=$nic mac=$mac" \
     "addr=$addr data=$data$extra" > /dev/ttyS0
"""

MARKER_UNIT = """[Unit]
Description=Print the ferry test boot marker on ttyS0
After=basic.target network.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ferry-marker

[Install]
WantedBy=multi-user.target
"""

GRUB_DEFAULTS = """GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 {cmdline}"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
"""

NETWORK = """[Match]
Name={nic}

[Network]
DHCP=ipv4
"""

# What a machine's build key covers of this module.
CONTENT = (MARKER_SCRIPT, MARKER_UNIT, GRUB_DEFAULTS, NETWORK)

DATA_DIR = "srv/ferry-data"
MANIFEST = "var/lib/ferry-test/manifest.sha256"


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def enable(root: Path, unit: str, target: str = "multi-user.target") -> None:
    """What `systemctl enable` does, without needing a running systemd."""
    wants = root / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for base in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"):
        if (root / base / unit).exists():
            link = wants / unit
            link.unlink(missing_ok=True)
            link.symlink_to(f"/{base}/{unit}")
            return
    raise FileNotFoundError(f"no unit {unit} in the tree")


def install_marker(root: Path) -> None:
    write(root, "usr/local/sbin/ferry-marker", MARKER_SCRIPT, 0o755)
    write(root, "etc/systemd/system/ferry-marker.service", MARKER_UNIT)
    enable(root, "ferry-marker.service")


def install_network(root: Path, nic: str) -> None:
    write(root, "etc/systemd/network/20-wired.network", NETWORK.format(nic=nic))
    enable(root, "systemd-networkd.service")


def install_grub_defaults(root: Path, cmdline: str, extra: str = "") -> None:
    write(root, "etc/default/grub", GRUB_DEFAULTS.format(cmdline=cmdline) + extra)


def write_live_data(root: Path, seed: int) -> dict[str, str]:
    """Files whose checksums prove a moved disk kept its data: half random,
    half compressible text, as a real disk's mix is. Returns path -> sha256."""
    manifest: dict[str, str] = {}
    data = root / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        blob = os.urandom(8 << 20)
        text = "".join(
            f"{seed}:{i}:{n} the quick brown fox jumps over the lazy dog\n"
            for n in range(150_000)
        ).encode()
        for name, payload in ((f"random-{i}.bin", blob), (f"text-{i}.txt", text)):
            (data / name).write_bytes(payload)
            manifest[f"/{DATA_DIR}/{name}"] = hashlib.sha256(payload).hexdigest()
    lines = "".join(f"{digest}  {path}\n" for path, digest in sorted(manifest.items()))
    write(root, MANIFEST, lines)
    return manifest
