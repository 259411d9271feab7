"""What an image is made of, as hashes: the chroot's key covers the elements,
ferry's PyPI dependencies and diskimage-builder's version, so a change in
``converters/`` or ``tui/`` reuses the chroot and only re-installs ferry;
the image's key adds ferry's source and this driver."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from converters import cache

REPO = Path(__file__).resolve().parent.parent
ELEMENTS = REPO / "image" / "elements"
# The elements the chroot is made of; debian-minimal brings the Debian
# kernel and systemd.
IMAGE_ELEMENTS = ("debian-minimal", "ferry-live")
RELEASE = "bookworm"
# ferry's own code in the image: the packages pyproject.toml ships.
SOURCE_DIRS = ("converters", "tui")
SOURCE_FILES = ("pyproject.toml", "README.md")
# Bump when the way the chroot is made changes outside the elements.
CHROOT_RECIPE = 1


def _tree_digest(paths: list[Path], base: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        rel = path.relative_to(base).as_posix()
        executable = bool(path.stat().st_mode & 0o111)
        h.update(f"{rel}\0{int(executable)}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _files(root: Path, skip_docs: bool = False) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".pyc"
        and not (skip_docs and p.suffix == ".rst")
    ]


def dependencies() -> list[str]:
    """ferry's PyPI requirements, as pyproject.toml states them."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def dib_version() -> str:
    try:
        return metadata.version("diskimage-builder")
    except metadata.PackageNotFoundError:
        return "missing"


def source_files() -> list[Path]:
    found = [REPO / f for f in SOURCE_FILES]
    for d in SOURCE_DIRS:
        found += _files(REPO / d)
    return found


@dataclass(frozen=True)
class Keys:
    wheels: str
    chroot: str
    image: str

    @property
    def medium_label(self) -> str:
        """ISO 9660 volume ID (at most 32 of A-Z, 0-9, _): names this build,
        so the live side can tell its own medium from another ferry stick."""
        return f"FERRY_{self.image[:12].upper()}"


def keys() -> Keys:
    wheels = cache.recipe_key("wheels", dependencies())
    chroot = cache.recipe_key(
        "chroot",
        CHROOT_RECIPE,
        RELEASE,
        IMAGE_ELEMENTS,
        # an element's README.rst does not change the chroot
        _tree_digest(_files(ELEMENTS, skip_docs=True), ELEMENTS),
        wheels,
        dib_version(),
    )
    driver = sorted((REPO / "image").glob("*.py"))
    image = cache.recipe_key(
        "image",
        chroot,
        _tree_digest(source_files(), REPO),
        _tree_digest(driver, REPO),
    )
    return Keys(wheels, chroot, image)


@dataclass(frozen=True)
class CachePaths:
    root: Path

    @classmethod
    def default(cls) -> CachePaths:
        return cls(cache.root() / "image")

    @property
    def dib(self) -> Path:
        """diskimage-builder's own cache: the debootstrap tarball, .deb files."""
        return self.root / "dib"

    @property
    def lock(self) -> Path:
        return self.root / "build.lock"

    def wheels(self, k: Keys) -> Path:
        return self.root / f"wheels-{k.wheels}"

    def chroot(self, k: Keys) -> Path:
        return self.root / f"chroot-{k.chroot}.tar"

    def image(self, k: Keys) -> Path:
        return self.root / f"live-{k.image}"

    def work(self, k: Keys) -> Path:
        return self.root / f"work-{k.image}"
