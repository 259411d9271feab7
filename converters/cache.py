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


def prune(directory: Path, prefix: str, keep: Path, spare: int = 0) -> None:
    """Remove other versions of an artefact (and leftovers of interrupted
    builds) so the cache holds one version per recipe and stays bounded.
    `spare` newest other versions survive: a test run of another working
    tree may still be reading them."""
    import shutil

    if not directory.exists():
        return
    others = [
        entry
        for entry in directory.iterdir()
        if entry.name.startswith(prefix) and entry.suffix != ".lock" and entry != keep
    ]
    others.sort(key=_mtime, reverse=True)
    for entry in others[spare:]:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # another build pruned it meanwhile
        return 0.0
