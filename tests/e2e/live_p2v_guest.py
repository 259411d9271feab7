"""Test-only instrumentation of the live P2V machine, written into its
overlay (never into the recipe) before it boots:

- ``ferry-writer.service``, in its own cgroup with IO accounting (so that
  systemd enables the io controller and io.max exists): rewrites 64 KiB with
  O_DIRECT and then a counter, atomically (write, fsync, rename), and
  prints each acknowledged write on ttyS0 with the guest's uptime and the
  write limit its cgroup has at that moment;
- ``ferry-live-p2v.service``: installs ferry from ``ferry serve``'s bundle
  with bundle_install.py, as docs/live-capture.md tells users, then runs
  ``ferry capture --live`` with a writer limit on that cgroup, its output
  on ttyS0 too, so one file orders the writer's acknowledgements and
  ferry's freeze;
- a marker field with the counter, which the converted VM prints.

Both services run only on the source hardware (root on /dev/sda1): the
converted VM (root on /dev/vda1) keeps the counter it was captured with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converters import accel
from converters.wire import bundle_install
from converters.wire.pairing import Pairing

SESSION = "live-p2v"
WRITER_CGROUP = "system.slice/ferry-writer.service"
WRITE_SIZE = 64 * 1024
# 8000 B/s: one 64 KiB write (and its counter) every 8 s at most, so the
# ~100 s copy of round 1 sees several limited acknowledgements (4K gave
# two, 52 s apart: the counter's own writes count too); unlimited, the
# writer acknowledged ~3 writes/s (~190 KB/s) here at load 2.
WRITER_LIMIT = "8K"
BASELINE_SECONDS = 20  # the writer alone, after the install's load
ON_SOURCE = "case $(findmnt -n -o SOURCE /) in /dev/sda*) ;; *) exit 0 ;; esac\n"

WRITER = (
    "#!/bin/sh\n"
    "# Rewrites 64 KiB and a counter; each write is acknowledged once durable.\n"
    + ON_SOURCE
    + r"""dir=/srv/ferry-writer
mkdir -p "$dir"
cg=/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)
i=$(cat "$dir/counter" 2>/dev/null || echo 0)
while :; do
    i=$((i + 1))
    dd if=/dev/zero of="$dir/blob" bs=64k count=1 oflag=direct \
        conv=notrunc,fsync status=none
    # a rename is atomic: a freeze at any point leaves a whole counter
    echo "$i" > "$dir/counter.new"
    sync "$dir/counter.new"
    mv "$dir/counter.new" "$dir/counter"
    lim=
    { read -r lim < "$cg/io.max"; } 2>/dev/null || true
    w=none
    case $lim in *wbps=*) w=${lim#*wbps=}; w=${w%% *} ;; esac
    read -r up _ < /proc/uptime
    echo "WRITER ack=$i up=$up wbps=$w" > /dev/ttyS0
done
"""
)

WRITER_UNIT = """[Unit]
Description=ferry live P2V test writer
After=local-fs.target

[Service]
ExecStart=/usr/local/sbin/ferry-writer
IOAccounting=yes
# The guest has one emulated CPU, and the writer's loop would take half of
# it from the install and the capture; its rate is measured when alone.
Nice=19

[Install]
WantedBy=multi-user.target
"""

CAPTURE = (
    "#!/bin/sh\n"
    "# Installs ferry from ferry serve's bundle and captures this machine live.\n"
    + ON_SOURCE
    + f"""run() {{
pairing=$(cat /root/ferry-pairing)
tries=0
until python3 /root/bundle_install.py "$pairing" /opt/ferry; do
    tries=$((tries + 1))
    [ "$tries" -ge 10 ] && {{ echo "FERRY-LIVE-DONE rc=install"; exit 1; }}
    sleep 5
done
echo "LIVE-P2V installed"
sleep {BASELINE_SECONDS}
echo "LIVE-P2V capture starts"
PYTHONUNBUFFERED=1 /opt/ferry/bin/ferry capture --live --server "$pairing" \\
    --name {SESSION} --writer-cgroup {WRITER_CGROUP} \\
    --writer-limit {WRITER_LIMIT}
echo "FERRY-LIVE-DONE rc=$?"
}}
# ttyS0 is reopened for each line: serial-getty's vhangup() of ttyS0, which
# may come after this starts, turns every descriptor opened before it into
# one that fails with EIO (the first runs lost all of this output so).
run 2>&1 | while IFS= read -r line; do printf '%s\\n' "$line" > /dev/ttyS0; done
"""
)

CAPTURE_UNIT = """[Unit]
Description=ferry live P2V test capture
After=network.target ferry-writer.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/ferry-live-p2v

[Install]
WantedBy=multi-user.target
"""

MARKER_FIELDS = (
    'echo "counter=$(cat /srv/ferry-writer/counter 2>/dev/null || echo none)"\n'
)


def instrument(disk: Path, pairing: Pairing) -> None:
    """Write the services into ``disk`` (a qcow2 overlay) with guestfs."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    g.set_backend_settings(accel.detect().guestfs_settings())
    g.add_drive_opts(str(disk), format="qcow2")
    g.launch()
    try:
        g.mount("/dev/sda1", "/")
        files = {
            "/usr/local/sbin/ferry-writer": (WRITER, 0o755),
            "/usr/local/sbin/ferry-live-p2v": (CAPTURE, 0o755),
            "/etc/systemd/system/ferry-writer.service": (WRITER_UNIT, 0o644),
            "/etc/systemd/system/ferry-live-p2v.service": (CAPTURE_UNIT, 0o644),
            "/etc/ferry-marker.fields": (MARKER_FIELDS, 0o644),
            "/root/ferry-pairing": (str(pairing) + "\n", 0o600),
            "/root/bundle_install.py": (
                Path(bundle_install.__file__).read_text(),
                0o644,
            ),
        }
        for path, (text, mode) in files.items():
            g.write(path, text)
            g.chmod(mode, path)
        wants = "/etc/systemd/system/multi-user.target.wants"
        g.mkdir_p(wants)
        for unit in ("ferry-writer.service", "ferry-live-p2v.service"):
            g.ln_sf(f"/etc/systemd/system/{unit}", f"{wants}/{unit}")
        g.umount_all()
        g.sync()
    finally:
        g.shutdown()
        g.close()


@dataclass(frozen=True)
class Ack:
    line: int  # index in the console's lines
    value: int
    uptime: float
    wbps: str  # the writer's io.max write limit when it was acknowledged


ACK = re.compile(r"WRITER ack=(\d+) up=([\d.]+) wbps=(\w+)$")


@dataclass
class Timeline:
    """The source's console: acknowledgements and ferry's lines, in order."""

    lines: list[str]
    acks: list[Ack]

    @classmethod
    def parse(cls, console: str) -> Timeline:
        lines = console.splitlines()
        acks = []
        for n, line in enumerate(lines):
            m = ACK.search(line)
            if m:
                acks.append(Ack(n, int(m[1]), float(m[2]), m[3]))
        return cls(lines, acks)

    def index(self, prefix: str) -> int:
        """Line number of the first line starting with ``prefix``."""
        for n, line in enumerate(self.lines):
            if line.startswith(prefix):
                return n
        raise AssertionError(f"no line {prefix!r} on the console")

    def between(self, start: int, end: int) -> list[Ack]:
        return [a for a in self.acks if start < a.line < end]


def write_rate(acks: list[Ack]) -> float:
    """Bytes per second the writer acknowledged over ``acks`` (in order; the
    first is the start, so two give one interval)."""
    assert len(acks) >= 2, acks
    seconds = acks[-1].uptime - acks[0].uptime
    return (acks[-1].value - acks[0].value) * WRITE_SIZE / seconds
