"""The live image, built once per test run (per worker, through the build's
own lock) by the same driver as `make image`, and taken from the cache when
nothing it is made of has changed."""

from __future__ import annotations

import pytest

from converters import cache
from tests.conftest import require_space
from tests.e2e.live_helpers import BUILD_SPACE


@pytest.fixture(scope="session")
def live_image():
    from image import build

    require_space(cache.root(), BUILD_SPACE)
    return build.ensure(echo=None)
