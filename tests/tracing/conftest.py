from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stand_ins.otlp_collector import OtlpCollector
from voiceplatform import tracing


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector().start()
    try:
        yield server
    finally:
        tracing.shutdown()  # never leave tracing on for the next test
        server.stop()
