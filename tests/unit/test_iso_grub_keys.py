"""The unattended ISO's GRUB entry carries a lab's hostname pattern: GRUB's
parser takes `{mac}` as a syntax error (and loses the whole entry) unless it
is quoted; grub-script-check is GRUB's own parser."""

from __future__ import annotations

import subprocess

from image import bootcfg

KEYS = "ferry.mode=v2p ferry.hostname=lab-{mac}-{serial} ferry.post=poweroff"


def test_an_unattended_entry_with_a_hostname_pattern_parses_in_grub(tmp_path):
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(bootcfg.iso_grub_cfg("FERRY_TEST", KEYS))
    check = subprocess.run(["grub-script-check", str(cfg)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # what GRUB hands the kernel once it has removed the quotes
    line = next(ln for ln in cfg.read_text().splitlines() if "ferry.mode=v2p" in ln)
    assert line.replace("'", "").split()[-3:] == KEYS.split()
