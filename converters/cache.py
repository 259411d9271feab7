"""Where ferry keeps expensive artefacts: ~/.cache/ferry (FERRY_CACHE), each
under a name that carries the hash of the recipe that made it, so a changed
recipe builds anew and an unchanged one is reused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def root() -> Path:
    env = os.environ.get("FERRY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ferry"


def recipe_key(*parts: object) -> str:
    """A short stable hash of whatever describes how an artefact is made."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(*paths: str | Path) -> str:
    """Hash of files' contents, for recipes defined by scripts on disk."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]
