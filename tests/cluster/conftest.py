"""One platform spread over namespace hosts per test package (see platform.py); torn down always."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.netns import netns_available
from tests.cluster.platform import ClusterError, ClusterPlatform, launch


@pytest.fixture(scope="package")
def cluster(postgres_dsn: str, redis_url: str, tmp_path_factory) -> Iterator[ClusterPlatform]:
    reason = netns_available()
    if reason:
        pytest.skip(f"cannot build namespace hosts here: {reason}")
    try:
        platform = launch(tmp_path_factory.mktemp("cluster"), postgres_dsn, redis_url)
    except ClusterError as exc:
        pytest.fail(str(exc))
    try:
        yield platform
    finally:
        platform.stop()
