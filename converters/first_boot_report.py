"""The first-boot report left in a deployed system: a one-shot systemd unit
that, once the network is online, tells the ``ferry serve`` the image came
from that this machine is up (host name, the NIC that reaches the server,
its MAC and address, seconds since boot), then removes itself and its
credential.

The credential is what the deploy registered with the server for this
machine alone (converters/deploy_report.py): the server's address as the
live side reached it, the certificate pin, the report id and a one-use
secret, in a root-only file. Never the pairing token: that secret can make
this one report and nothing else (converters/wire/reports.py).

The script is POSIX sh. It posts with curl, pinned by the SHA-256 of the
server's public key (``--pinnedpubkey``, which curl checks even with
``-k``), or else with python3 (the SHA-256 of the certificate, as the
pairing pins it). An image with neither gets nothing installed, and the
deploy says so.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from converters.events import EventStream
from converters.wire.report_types import ID_RE, report_path

UNIT = "ferry-first-boot-report.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
WANTS_PATH = f"/etc/systemd/system/multi-user.target.wants/{UNIT}"
SCRIPT_PATH = "/usr/local/sbin/ferry-first-boot-report"
CONF_DIR = "/etc/ferry"
CONF_PATH = f"{CONF_DIR}/first-boot-report.conf"
# Everything the unit removes once the report is made (or refused).
INSTALLED = (WANTS_PATH, UNIT_PATH, CONF_PATH, SCRIPT_PATH)
# How long the script keeps trying while the network and the server come
# up, before it leaves itself for the next boot.
RETRY_SECONDS = 300

CURL_PATHS = ("/usr/bin/curl", "/bin/curl")
PYTHON_PATHS = ("/usr/bin/python3", "/bin/python3")
SYSTEMD_PATHS = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
_PIN = re.compile(r"^sha256//[A-Za-z0-9+/]{43}=$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


class NotArmed(Exception):
    """The server could not register the report; the message says why."""


@dataclass(frozen=True)
class Credential:
    """What the deployed system may know: where to report, how to trust
    the server, and the one report it may make."""

    host: str  # as the live side reached ferry serve
    port: int
    report_id: str
    secret: str
    pin: str  # sha256//BASE64 of the server's public key (curl)
    fingerprint: str  # SHA-256 hex of the certificate (the pairing's pin)

    def __post_init__(self) -> None:
        # Each value goes into a shell file: only characters that need no
        # quoting beyond the single quotes around them.
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if not _HOSTNAME.match(self.host):
                raise ValueError(f"bad server host {self.host!r}") from None
        if not (ID_RE.match(self.report_id) and _SECRET.match(self.secret)):
            raise ValueError("bad report id or secret")
        if not _PIN.match(self.pin) or not re.match(
            r"^[0-9a-f]{64}$", self.fingerprint
        ):
            raise ValueError("bad certificate pin")
        if not 0 < self.port < 65536:
            raise ValueError(f"bad port {self.port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{report_path(self.report_id)}"


@dataclass(frozen=True)
class Armed:
    """A report installed in the deployed system."""

    report_id: str
    server: str  # HOST:PORT it will report to
    tool: str  # "curl" or "python3"
    hostname: str


def conf_text(cred: Credential) -> str:
    return (
        "# ferry first-boot report: one report to ferry serve, then deleted\n"
        f"FERRY_REPORT_URL='{cred.url}'\n"
        f"FERRY_REPORT_HOST='{cred.host}'\n"
        f"FERRY_REPORT_SECRET='{cred.secret}'\n"
        f"FERRY_REPORT_PIN='{cred.pin}'\n"
        f"FERRY_REPORT_FP='{cred.fingerprint}'\n"
    )


UNIT_TEXT = f"""[Unit]
Description=Tell ferry serve this deployed machine is up (once)
Wants=network-online.target
After=network-online.target
ConditionPathExists={CONF_PATH}

[Service]
# simple, not oneshot: multi-user.target must not wait minutes for a
# server that is not there yet.
Type=simple
ExecStart={SCRIPT_PATH}
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

_SCRIPT = r"""#!/bin/sh
# ferry first-boot report: tells ferry serve this deployed machine is up,
# once, then removes itself and its credential.
CONF=@CONF@
[ -r "$CONF" ] || exit 0
set -a
. "$CONF"
set +a
boot=$(cut -d' ' -f1 /proc/uptime)
say() { echo "ferry-first-boot-report: $*"; }
clean() { printf '%s' "$1" | tr -cd 'A-Za-z0-9._:-'; }

remove_all() {
    rm -f @INSTALLED@
    rmdir @CONF_DIR@ 2>/dev/null
    # A machine switched off right after its first boot must not come
    # back with the credential.
    sync
    return 0
}

# The NIC and source address the kernel picks to reach the server.
route() {
    target=$FERRY_REPORT_HOST
    case $target in
    *[!0-9a-fA-F.:]*) target=$(getent ahosts "$target" | awk 'NR==1 {print $1}') ;;
    esac
    [ -n "$target" ] || return 1
    ip route get "$target" 2>/dev/null |
        sed -n 's/.* dev \([^ ]*\) .*src \([^ ]*\).*/\1 \2/p' | head -n 1
}

# $1 $2: route's NIC and source address.
body() {
    host=$(clean "$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)")
    nic=$(clean "$1")
    addr=$(clean "$2")
    mac=00:00:00:00:00:00
    file=/sys/class/net/$nic/address
    [ -r "$file" ] && mac=$(clean "$(cat "$file")")
    printf '{"hostname":"%s","nic":"%s","mac":"%s","addr":"%s","boot_seconds":%s}' \
        "$host" "$nic" "$mac" "$addr" "$boot"
}

# Each prints the HTTP status, 000 when there was no answer.
post_curl() {
    # The secret goes in through a config on stdin, not the command line
    # that every local user can read.
    printf 'header = "Authorization: Bearer %s"\n' "$FERRY_REPORT_SECRET" |
        curl -sS -k --pinnedpubkey "$FERRY_REPORT_PIN" -K - \
            --connect-timeout 10 --max-time 30 -o /dev/null -w '%{http_code}' \
            -X POST -H 'Content-Type: application/json' --data-binary "$1" \
            "$FERRY_REPORT_URL"
}

post_python() {
    python3 - "$1" <<'PYTHON'
import hashlib, http.client, os, ssl, sys
from urllib.parse import urlsplit

url = urlsplit(os.environ["FERRY_REPORT_URL"])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the pin below is the trust
conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=30, context=ctx)
try:
    conn.connect()
    seen = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
    if seen != os.environ["FERRY_REPORT_FP"]:
        sys.stderr.write("the server's certificate does not match the pin\n")
        print("000")
        sys.exit(0)
    headers = {
        "Authorization": "Bearer " + os.environ["FERRY_REPORT_SECRET"],
        "Content-Type": "application/json",
    }
    conn.request("POST", url.path, sys.argv[1].encode(), headers)
    print(conn.getresponse().status)
except OSError as e:
    sys.stderr.write(f"{e}\n")
    print("000")
PYTHON
}

if command -v curl >/dev/null 2>&1; then post=post_curl; else post=post_python; fi
waited=0
pause=2
while :; do
    # network-online.target can come before DHCP has given an address: no
    # route to the server yet means not ready, not a report with no NIC
    # (a send that raced the address in once reported nic=unknown).
    via=$(route)
    code=000
    [ -n "$via" ] && code=$($post "$(body $via)")
    case $code in
    2??)
        say "reported to ferry serve at $FERRY_REPORT_HOST: up after ${boot}s"
        remove_all
        exit 0
        ;;
    4??)
        # The slot takes no report (made already, or unknown): trying
        # again cannot help.
        say "ferry serve at $FERRY_REPORT_HOST refused the report (HTTP $code)"
        remove_all
        exit 0
        ;;
    esac
    if [ "$waited" -ge @RETRY@ ]; then
        [ -n "$via" ] || say "no route to ferry serve at $FERRY_REPORT_HOST"
        say "ferry serve at $FERRY_REPORT_HOST did not answer; again next boot"
        exit 1
    fi
    sleep "$pause"
    waited=$((waited + pause))
    [ "$pause" -lt 30 ] && pause=$((pause * 2))
done
"""


def script_text(root: str = "", retry: int = RETRY_SECONDS) -> str:
    """The script as installed; ``root`` and ``retry`` let a test run the
    same text on a folder standing for ``/``, without minutes of retries."""
    return (
        _SCRIPT.replace("@CONF@", root + CONF_PATH)
        .replace("@CONF_DIR@", root + CONF_DIR)
        .replace("@INSTALLED@", " ".join(root + p for p in INSTALLED))
        .replace("@RETRY@", str(retry))
    )


def tool(guest) -> str | None:
    """What the image can report with: curl, else python3, else nothing."""
    if not any(guest.is_file(p) for p in SYSTEMD_PATHS):
        return None
    if any(guest.is_file(p) for p in CURL_PATHS):
        return "curl"
    if any(guest.is_file(p) for p in PYTHON_PATHS):
        return "python3"
    return None


def install(guest, cred: Credential) -> None:
    """The credential (0600 in a 0700 folder), the script, the unit and
    its wants link (no systemd runs in a chroot to enable it)."""
    guest.mkdir_p(CONF_DIR)
    guest.run_command(["chmod", "0700", CONF_DIR], quiet=True)
    guest.write(CONF_PATH, conf_text(cred), mode=0o600)
    guest.mkdir_p("/usr/local/sbin")
    guest.write(SCRIPT_PATH, script_text(), mode=0o755)
    guest.mkdir_p("/etc/systemd/system/multi-user.target.wants")
    guest.write(UNIT_PATH, UNIT_TEXT, mode=0o644)
    guest.run_command(["ln", "-sfn", UNIT_PATH, WANTS_PATH], quiet=True)


def arm(
    guest,
    register: Callable[[str], Credential],
    hostname: str,
    events: EventStream,
) -> Armed | None:
    """Register this machine with the server and install its report; None
    (with a warning) when the image has no way to send one."""
    found = tool(guest)
    if found is None:
        events.log(
            "first-boot report: not installed: the image has neither curl nor "
            "python3 (or no systemd), so it could not report its first boot",
            "warning",
        )
        return None
    try:
        cred = register(hostname)
    except NotArmed as e:
        # The machine is deployed either way: a report is news about it,
        # not a condition of it.
        events.log(f"first-boot report: not installed: {e}", "warning")
        return None
    install(guest, cred)
    armed = Armed(cred.report_id, f"{cred.host}:{cred.port}", found, hostname)
    events.log(
        f"first-boot report: {hostname} will report to ferry serve at "
        f"{armed.server} when it first boots (report {cred.report_id}, {found})"
    )
    return armed
