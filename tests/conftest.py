"""Shared fixtures: real NATS / Postgres / Redis on loopback, or embedded ones when absent."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from voiceplatform.bus.memory import MemoryBroker

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so tests can import tests.stand_ins and bench helpers

from voiceplatform_devstack.devinfra import port_open  # noqa: E402

# gateways record every call (VP_RECORDINGS_DIR): tests' calls go to a temporary folder, never the repo
os.environ.setdefault(
    "VP_RECORDINGS_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"vp-test-recordings-{os.getpid()}")
)


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    if port_open("127.0.0.1", 4222):
        yield "nats://127.0.0.1:4222"
        return
    from voiceplatform_devstack.devinfra import EmbeddedNats

    server = EmbeddedNats.start(Path(os.environ.get("TMPDIR", "/tmp")) / "vp-test-nats")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    dsn = os.environ.get("POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/test"
        return
    from voiceplatform_devstack.devinfra import EmbeddedPostgres

    server = EmbeddedPostgres.start(Path(os.environ.get("TMPDIR", "/tmp")) / "vp-test-pg")
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/15"
        return
    from voiceplatform_devstack.devinfra import EmbeddedRedis

    server = EmbeddedRedis.start(Path(os.environ.get("TMPDIR", "/tmp")) / "vp-test-redis")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def nats_bus(nats_url: str) -> AsyncIterator[object]:
    from voiceplatform.bus.nats import NatsBus

    bus = await NatsBus.connect(nats_url, "test")
    try:
        yield bus
    finally:
        await bus.close()
