"""``python -m image.build`` (``make image``): the live environment's ISO
and PXE bundle, from the cache when nothing they are made of has changed.

    build/ferry-live.iso   hybrid: BIOS and UEFI, CD and USB (dd)
    build/pxe/             vmlinuz, initrd.img, ferry.ipxe, grub.cfg
    build/SHA256SUMS       build/image-build.log

Stages and their cache (``~/.cache/ferry/image``, see docs/image.md): the
chroot (diskimage-builder; minutes, rebuilt when the elements or ferry's
dependencies change), then ferry from the working tree, the initramfs and
the media (a few minutes), cached by a key over all of it. Tests call
``ensure()`` and use the cached outputs in place.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from converters import cache
from image import assemble, chroot, recipe
from image.assemble import Outputs
from image.steps import BuildError, BuildLog, human_size, human_time

# DESIGN.md: the ISO must fit this; tests assert it.
ISO_BUDGET = 350 << 20


@contextmanager
def locked(paths: recipe.CachePaths):
    """One build at a time per cache (make image and a test run may race)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure(
    paths: recipe.CachePaths | None = None,
    echo=sys.stdout,
    rebuild_chroot: bool = False,
) -> Outputs:
    """The outputs for the current tree, built if their key is not cached."""
    paths = paths or recipe.CachePaths.default()
    with locked(paths):
        keys = recipe.keys()
        outputs = Outputs(paths.image(keys))
        if outputs.sums.exists() and not rebuild_chroot:
            if echo:
                print(f"image: cached ({outputs.directory})", file=echo)
            return outputs
        if rebuild_chroot:
            paths.chroot(keys).unlink(missing_ok=True)
        partial = outputs.directory.with_name(outputs.directory.name + ".partial")
        assemble.remove_tree(partial)
        log = BuildLog(partial.with_name(partial.name + ".log"), echo)
        started = time.monotonic()
        try:
            log.say(f"building image {keys.image} (chroot {keys.chroot})")
            tar = chroot.build(paths, keys, log)
            built = assemble.assemble(
                tar, keys, assemble.scratch(paths.root), partial, log
            )
            log.times["total"] = time.monotonic() - started
            _manifest(built, keys, log)
        finally:
            log.close()
        shutil.move(log.path, Outputs(partial).log)
        assemble.remove_tree(outputs.directory)
        partial.rename(outputs.directory)
        cache.prune(paths.root, "live-", outputs.directory, spare=2)
        cache.prune(paths.root, "work-", paths.root / "none")
        return outputs


def built_keys(outputs: Outputs) -> recipe.Keys:
    """The keys `outputs` were built with, which the live system inside them
    knows (its medium label), whatever the working tree is now."""
    facts = json.loads((outputs.directory / "manifest.json").read_text())
    return recipe.Keys(wheels="", chroot=facts["chroot_key"], image=facts["key"])


def _manifest(outputs: Outputs, keys: recipe.Keys, log: BuildLog) -> None:
    facts = {
        "key": keys.image,
        "chroot_key": keys.chroot,
        "medium_label": keys.medium_label,
        "iso_bytes": outputs.iso.stat().st_size,
        "initrd_bytes": outputs.initrd.stat().st_size,
        "kernel_bytes": outputs.kernel.stat().st_size,
        "seconds": {k: round(v, 1) for k, v in log.times.items()},
    }
    (outputs.directory / "manifest.json").write_text(json.dumps(facts, indent=2))


def publish(outputs: Outputs, dest: Path) -> Outputs:
    """Copy (hard-link where possible) the outputs to `dest` (build/)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest / "pxe", ignore_errors=True)
    (dest / "pxe").mkdir()
    pairs = [(p, dest / p.relative_to(outputs.directory)) for p in outputs.files()]
    pairs += [
        (outputs.sums, dest / "SHA256SUMS"),
        (outputs.log, dest / "image-build.log"),
        (outputs.directory / "manifest.json", dest / "image-manifest.json"),
    ]
    for src, target in pairs:
        target.unlink(missing_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
    return Outputs(dest)


class KeysError(ValueError):
    pass


def unattended_iso(outputs: Outputs, dest: Path, kernel_keys: str, echo=None) -> Path:
    """An ISO whose default entry boots with `kernel_keys` (ferry.* keys,
    checked first: a stick that would refuse to run is not written), made
    in seconds from the built kernel and initramfs. The medium keeps the
    build's label, so the live side still knows it booted from it."""
    from converters import kernel_cmdline

    words = kernel_keys.split()
    others = [w for w in words if not w.startswith(kernel_cmdline.PREFIX)]
    if others:
        raise KeysError(f"only ferry.* keys belong here, not {' '.join(others)}")
    parsed = kernel_cmdline.parse(kernel_keys)
    if parsed.fatal:
        raise KeysError("; ".join(p.message for p in parsed.fatal))
    log = BuildLog(dest.with_suffix(".log"), echo)
    try:
        assemble.make_iso(
            outputs.kernel, outputs.initrd, dest, built_keys(outputs), log, kernel_keys
        )
    finally:
        log.close()
    return dest


def report(outputs: Outputs, published: Outputs) -> str:
    facts = json.loads((outputs.directory / "manifest.json").read_text())
    times = ", ".join(f"{k} {human_time(v)}" for k, v in facts["seconds"].items())
    iso = facts["iso_bytes"]
    budget = "within" if iso <= ISO_BUDGET else "OVER"
    return "\n".join(
        [
            f"ISO:        {published.iso} ({human_size(iso)}, {budget} the "
            f"{human_size(ISO_BUDGET)} budget)",
            f"PXE bundle: {published.pxe}/ (vmlinuz, initrd.img "
            f"{human_size(facts['initrd_bytes'])}, ferry.ipxe, grub.cfg)",
            f"checksums:  {published.sums}",
            f"build log:  {published.directory / 'image-build.log'}",
            f"build times (when built): {times}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image.build")
    parser.add_argument(
        "--output", type=Path, default=recipe.REPO / "build", help="default build/"
    )
    parser.add_argument(
        "--rebuild-chroot",
        action="store_true",
        help="run diskimage-builder again even if its chroot is cached",
    )
    parser.add_argument(
        "--keys",
        default="",
        metavar="KEYS",
        help="also write ferry-live-unattended.iso, whose default entry boots "
        'with these ferry.* keys, e.g. "ferry.mode=p2v ferry.server=... '
        'ferry.token=..." (docs/unattended.md)',
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make image: run as root (diskimage-builder, chroot)", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        outputs = ensure(rebuild_chroot=args.rebuild_chroot)
    except (BuildError, chroot.mirrors.MirrorError, FileNotFoundError) as e:
        print(f"make image: {e}", file=sys.stderr)
        return 1
    published = publish(outputs, args.output.resolve())
    print(report(outputs, published))
    custom = published.directory / "ferry-live-unattended.iso"
    custom.unlink(missing_ok=True)  # from an earlier run, maybe other keys
    if args.keys:
        try:
            unattended_iso(outputs, custom, args.keys)
        except (KeysError, BuildError) as e:
            print(f"make image: no unattended ISO: {e}", file=sys.stderr)
            return 1
        print(f"unattended: {custom} (default entry: {args.keys})")
    print(f"this run: {human_time(time.monotonic() - started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
