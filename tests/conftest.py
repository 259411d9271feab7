"""Fixtures every test can use: built test machines, per-test work folders
whose QEMU console logs are kept when a test fails, and a disk-space guard."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from converters import cache

# `serve` and `pairing`: a real ferry serve on loopback, for any test.
pytest_plugins = ["tests.integration.test_wire_support"]

REPO = Path(__file__).resolve().parent.parent
KEEP_LOGS = REPO / "test-logs"
# A machine build needs its disk twice over (work file and cached copy).
MIN_FREE_FOR_MACHINES = 12 << 30


# The modules (or classes) that boot QEMU machines for minutes, longest
# first, so that `make test`'s two workers (xdist, --dist loadscope without
# reordering) start on them and finish together; the rest keep their order.
# A worker holding two tests or fewer takes the next scope, hence the
# golden-path classes (two tests each) are not next to each other.
HEAVY_FIRST = [
    "tests/e2e/test_live_p2v_boots.py",
    "tests/e2e/test_convert_boots.py",
    "tests/e2e/test_golden_path.py::TestGoldenPathFromTheIsoOnSeabios",
    "tests/e2e/test_deploy_lab.py",
    "tests/e2e/test_import_boots.py",
    "tests/e2e/test_golden_path.py::TestGoldenPathOverPxe",
    "tests/e2e/test_deploy_boots.py",
    "tests/e2e/test_live_boots.py",
    "tests/e2e/test_harness_boots.py",
    "tests/e2e/test_convert_safety.py",
    "tests/integration/test_initramfs_dracut.py",
    "tests/integration/test_migrate_libvirt.py",
    "tests/integration/test_migrate_live.py",
    "tests/integration/test_serve_convert.py",
    "tests/integration/test_live_capture.py",
]


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        for i, prefix in enumerate(HEAVY_FIRST):
            if item.nodeid.startswith(prefix):
                return i
        return len(HEAVY_FIRST)

    items.sort(key=rank)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_failed_key] = report.failed
    return report


_failed_key = pytest.StashKey[bool]()


@pytest.fixture
def workdir(request, tmp_path: Path) -> Iterator[Path]:
    """A folder for a test's disks and logs; on failure its logs are copied
    to test-logs/<test name>/ for the person (or CI) reading the failure."""
    yield tmp_path
    if request.node.stash.get(_failed_key, False):
        dest = KEEP_LOGS / request.node.name
        dest.mkdir(parents=True, exist_ok=True)
        for log in tmp_path.rglob("*.log"):
            shutil.copy(log, dest / log.name)
    # disks are large: do not let pytest keep them around
    for big in list(tmp_path.rglob("*.qcow2")) + list(tmp_path.rglob("*.raw")):
        big.unlink(missing_ok=True)


def require_space(path: Path, needed: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < needed:
        pytest.fail(
            f"only {free >> 30} GiB free in {path}; these tests need "
            f"{needed >> 30} GiB (make clean-cache frees old artefacts)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def machine_builder():
    """Builds (or takes from the cache) a test machine by recipe name."""
    from tests.harness import machines

    def build(name: str) -> machines.BuiltMachine:
        return machines.build(name)

    require_space(cache.root(), MIN_FREE_FOR_MACHINES)
    return build
