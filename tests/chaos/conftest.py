"""The fault-injection platform, one per test package (see platform.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.platform import ChaosPlatform, PlatformError, launch


@pytest.fixture(scope="package")
def chaos_platform(postgres_dsn: str, redis_url: str, tmp_path_factory) -> Iterator[ChaosPlatform]:
    try:
        platform = launch(tmp_path_factory.mktemp("chaos"), postgres_dsn, redis_url)
    except PlatformError as exc:
        pytest.fail(str(exc))
    try:
        yield platform
    finally:
        platform.stop()
