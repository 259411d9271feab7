"""The bundle `ferry serve` hands to a running server for live capture
(docs/live-capture.md): a wheel of this tree and wheels of its PyPI
dependencies in one folder, installed there with ``pip --no-index``. The
same wheels as the live image's (chroot.wheels, cached by dependency list).

    python -m image.bundle STORAGE/.ferry/bundle
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from image import assemble, chroot, recipe
from image.steps import BuildLog


def build(out: Path, echo=sys.stdout) -> Path:
    """``out`` holding every wheel and a requirements.txt naming ferry."""
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
            for wheel in [*wheels.glob("*.whl"), ferry]:
                shutil.copy2(wheel, partial / wheel.name)
            (partial / "requirements.txt").write_text("ferry\n")
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    finally:
        log.close()
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m image.bundle DIR")
    print(build(Path(sys.argv[1])))
