"""Fixtures for per-turn work failover: a private NATS server per test (the work consumers are
durable and shared by name, so a shared server would mix in other tests' workers)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm.conftest import make_openai_robot, openai_server, robots_dir
from voiceplatform_devstack import devinfra
from voiceplatform_devstack.devinfra import EmbeddedNats

__all__ = ["make_openai_robot", "openai_server", "robots_dir"]


@pytest.fixture
def private_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A NATS server of this test's own; ``VP_TEST_NATS_SERVER`` picks its binary (e.g. a 2.9 one)."""
    binary = os.environ.get("VP_TEST_NATS_SERVER")
    if binary:
        monkeypatch.setattr(devinfra, "nats_server_binary", lambda: Path(binary))
    server = EmbeddedNats.start(tmp_path / "nats")
    try:
        yield server.url
    finally:
        server.stop()
