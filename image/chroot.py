"""The cached chroot: ferry's PyPI dependencies as wheels downloaded on this
host (the chroot reaches no index), then diskimage-builder with ferry's
elements, for the chroot only (``-t tar``): its block-device phase needs
device-mapper, which build hosts may lack, and the ISO is assembled here
anyway (assemble.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from converters import cache
from image import mirrors, recipe
from image.steps import BuildLog


def wheels(paths: recipe.CachePaths, keys: recipe.Keys, log: BuildLog) -> Path:
    """A folder of wheels for ferry's dependencies and a requirements.txt
    naming them; downloaded once per dependency list. The host's venv is
    Debian's Python 3.11, as in the image, so the wheels fit."""
    done = paths.wheels(keys)
    if (done / "requirements.txt").exists():
        log.say(f"wheels: cached in {done}")
        return done
    partial = done.with_name(done.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    deps = recipe.dependencies()
    with log.step("wheels"):
        log.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--disable-pip-version-check",
                "--wheel-dir",
                partial,
                *deps,
            ]
        )
        (partial / "requirements.txt").write_text("\n".join(deps) + "\n")
    partial.rename(done)
    cache.prune(paths.root, "wheels-", done)
    return done


def dib_env(wheel_dir: Path, paths: recipe.CachePaths) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    # The host's pip settings (local indexes, constraints) mean nothing in
    # the chroot, which installs from the wheel folder only.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(mirrors.find(recipe.RELEASE).dib_env())
    env.update(
        {
            "PATH": f"{venv_bin}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
            "ELEMENTS_PATH": str(recipe.ELEMENTS),
            "DIB_RELEASE": recipe.RELEASE,
            "DIB_IMAGE_CACHE": str(paths.dib),
            # debootstrap's result and the .deb files are kept across builds
            "DIB_DEBOOTSTRAP_CACHE": "1",
            "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1",
            "FERRY_WHEELS_DIR": str(wheel_dir),
        }
    )
    return env


def build(paths: recipe.CachePaths, keys: recipe.Keys, log: BuildLog) -> Path:
    """The chroot as a tar file, built by diskimage-builder when its key is
    not in the cache."""
    tar = paths.chroot(keys)
    if tar.exists():
        log.say(f"chroot: cached ({tar.name})")
        return tar
    wheel_dir = wheels(paths, keys, log)
    venv_bin = Path(sys.executable).parent
    dib = venv_bin / "disk-image-create"
    if not dib.exists():
        raise FileNotFoundError(f"{dib} missing: run make setup (extra 'image')")
    partial = tar.with_name(tar.stem + ".partial")
    paths.dib.mkdir(parents=True, exist_ok=True)
    with log.step("chroot (diskimage-builder)"):
        log.run(
            [
                dib,
                "-a",
                "amd64",
                "-t",
                "tar",
                "--no-tmpfs",
                "-o",
                partial,
                *recipe.IMAGE_ELEMENTS,
            ],
            env=dib_env(wheel_dir, paths),
        )
    Path(f"{partial}.tar").rename(tar)  # disk-image-create adds the type
    cache.prune(paths.root, "chroot-", tar)
    return tar
