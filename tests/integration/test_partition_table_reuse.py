"""A loop device (or a hot-swapped disk) that comes back with another,
bigger disk behind the same path: libparted's device cache once kept the
old size, and parted crashed the whole process on the new GPT. The read
runs in a child process so that a crash fails this test instead of the
worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MiB = 1 << 20

CHILD = r"""
import subprocess, sys
from converters.partition_table import read_partition_table

small, big = sys.argv[1], sys.argv[2]
dev = subprocess.run(["losetup", "--find", "--show", "--read-only", small],
                     capture_output=True, text=True, check=True).stdout.strip()
try:
    first = read_partition_table(dev)
finally:
    subprocess.run(["losetup", "-d", dev], check=True)
# the same path again, now for the bigger disk (another process may have
# taken it meanwhile: then there is nothing to prove this time)
if subprocess.run(["losetup", "--read-only", dev, big]).returncode:
    print("SKIP", dev, "taken")
    sys.exit(0)
try:
    second = read_partition_table(dev)
finally:
    subprocess.run(["losetup", "-d", dev], check=True)
print(first.label, len(first.partitions), second.label, len(second.partitions),
      second.disk_size, second.partitions[-1].end)
"""


def _disk(path: Path, size_mib: int, script: str) -> Path:
    subprocess.run(["truncate", "-s", f"{size_mib}M", str(path)], check=True)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True)
    return path


def test_a_loop_device_reattached_to_a_bigger_gpt_disk_reads_its_new_table(tmp_path):
    small = _disk(tmp_path / "small.img", 64, "label: dos\n,32M,L\n,,S\n")
    big = _disk(tmp_path / "big.img", 256, "label: gpt\n,32M,U\n,64M,L\n,,L\n")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(small), str(big)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    if child.stdout.startswith("SKIP"):
        return
    # the new size, and the last partition where the new table puts it
    # (sfdisk ends it on the last whole MiB before the backup GPT)
    assert child.stdout.split() == [
        "msdos",
        "2",
        "gpt",
        "3",
        str(256 * MiB),
        str(255 * MiB),
    ]
