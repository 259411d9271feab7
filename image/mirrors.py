"""The Debian mirrors this host already uses, read from its apt sources, so
that no mirror host is ever written into the project (ENVIRONMENT.md).
diskimage-builder needs two: the archive and the security archive."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path


class MirrorError(RuntimeError):
    pass


@dataclass(frozen=True)
class Mirrors:
    archive: str  # serves SUITE and SUITE-updates
    security: str  # serves SUITE-security

    def dib_env(self) -> dict[str, str]:
        return {
            "DIB_DISTRIBUTION_MIRROR": self.archive,
            "DIB_DEBIAN_SECURITY_MIRROR": self.security,
        }


def _deb822(text: str):
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields and "deb" in fields.get("types", "deb").split():
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    yield uri, suite


def _one_line(text: str):
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line).split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], words[2]


def sources(etc: str = "/etc"):
    """(uri, suite) for every `deb` line of the host's apt sources."""
    for path in sorted(glob.glob(f"{etc}/apt/sources.list.d/*.sources")):
        yield from _deb822(Path(path).read_text())
    one_line = glob.glob(f"{etc}/apt/sources.list.d/*.list")
    for path in [f"{etc}/apt/sources.list", *one_line]:
        try:
            yield from _one_line(Path(path).read_text())
        except OSError:
            continue


def find(suite: str = "bookworm", etc: str = "/etc") -> Mirrors:
    """FERRY_DEBIAN_MIRROR and FERRY_DEBIAN_SECURITY_MIRROR win; otherwise the
    host's sources for SUITE and SUITE-security."""
    found = {s: u for u, s in reversed(list(sources(etc)))}
    archive = os.environ.get("FERRY_DEBIAN_MIRROR") or found.get(suite)
    security = os.environ.get("FERRY_DEBIAN_SECURITY_MIRROR") or found.get(
        f"{suite}-security"
    )
    if not archive:
        raise MirrorError(
            f"no apt source for {suite} on this host; set FERRY_DEBIAN_MIRROR"
        )
    if not security:
        raise MirrorError(
            f"no apt source for {suite}-security on this host; set "
            "FERRY_DEBIAN_SECURITY_MIRROR (diskimage-builder's default is "
            "unreachable on machines without direct internet access)"
        )
    return Mirrors(archive.rstrip("/"), security.rstrip("/"))
