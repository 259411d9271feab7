"""The Debian mirror this host already uses, read from its apt sources, so
that no mirror host is ever written into the project."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

FALLBACK_ERROR = (
    "no Debian mirror found in /etc/apt/sources.list or "
    "/etc/apt/sources.list.d/*.sources; set FERRY_DEBIAN_MIRROR"
)


def _deb822_stanzas(text: str):
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields:
            yield fields


def debian_mirror(suite: str = "bookworm", etc: str = "/etc") -> str:
    """URI serving `suite` (not its -security or -updates pockets)."""
    if os.environ.get("FERRY_DEBIAN_MIRROR"):
        return os.environ["FERRY_DEBIAN_MIRROR"]
    for path in sorted(glob.glob(f"{etc}/apt/sources.list.d/*.sources")):
        for fields in _deb822_stanzas(Path(path).read_text()):
            if (
                suite in fields.get("suites", "").split()
                and "deb" in fields.get("types", "deb").split()
            ):
                return fields["uris"].split()[0]
    one_line = [
        f"{etc}/apt/sources.list",
        *glob.glob(f"{etc}/apt/sources.list.d/*.list"),
    ]
    for path in one_line:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise RuntimeError(FALLBACK_ERROR)
