"""The bundle `ferry serve` hands to a running server for live capture
(docs/live-capture.md): a wheel of this tree and the wheels of the PyPI
dependencies ``ferry capture --live`` runs with, in one folder, which
``bundle_install.py`` unpacks there. The same wheels as the live image's
(chroot.wheels, cached by dependency list).

    python -m image.bundle STORAGE/.ferry/bundle
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from image import assemble, chroot, recipe
from image.steps import BuildLog

# Used only by `ferry serve` (aiohttp, imported there lazily) and the TUI
# (textual): on the server being captured they would be a third of the
# files to unpack for nothing. Their own dependencies go with them unless
# another root needs them.
NOT_ON_THE_SOURCE = {"aiohttp", "textual"}


def build(out: Path, echo=sys.stdout) -> Path:
    """``out`` holding the wheels and a requirements.txt naming them."""
    paths = recipe.CachePaths.default()
    paths.root.mkdir(parents=True, exist_ok=True)
    log = BuildLog(paths.root / "bundle.log", echo=echo)
    try:
        wheels = chroot.wheels(paths, recipe.keys(), log)
        with tempfile.TemporaryDirectory(prefix="ferry-bundle-") as tmp:
            ferry = assemble.ferry_wheel(Path(tmp), log)
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            chosen = [*needed(sorted(wheels.glob("*.whl"))), ferry]
            for wheel in chosen:
                shutil.copy2(wheel, partial / wheel.name)
            (partial / "requirements.txt").write_text(
                "".join(f"{w.name}\n" for w in chosen)
            )
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    finally:
        log.close()
    return out


def needed(wheels: list[Path]) -> list[Path]:
    """The wheels ferry's requirements reach, leaving NOT_ON_THE_SOURCE out:
    the roots and, transitively, each one's Requires-Dist without extras."""
    by_name = {_norm(w.name.split("-")[0]): w for w in wheels}
    todo = [_norm(_name_of(r)) for r in recipe.dependencies()]
    todo = [n for n in todo if n not in NOT_ON_THE_SOURCE]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in by_name:
            raise SystemExit(f"bundle: no wheel for {name} in {wheels[0].parent}")
        todo.extend(_requires(by_name[name]))
    return [by_name[n] for n in sorted(seen)]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _name_of(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip())[0]


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [
        _norm(_name_of(line.split(":", 1)[1]))
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m image.bundle DIR")
    print(build(Path(sys.argv[1])))
