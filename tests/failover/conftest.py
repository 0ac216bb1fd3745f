"""Failover fixtures: a private NATS server (the shared one has other helpers' vad/asr instances
answering assignments), a robot for the span engine, and two worker processes per role."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.failover.stack import Beats, Gateway, Workers, wait_until, watch_heartbeats, write_robot
from voiceplatform_devstack.devinfra import EmbeddedNats

INSTANCES = {"vad": ["vad-a", "vad-b"], "asr": ["asr-a", "asr-b"]}


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedNats.start(tmp_path_factory.mktemp("failover-nats"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def failover_robots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robots")
    write_robot(root)
    return root


@pytest.fixture
async def stack(
    private_nats: str, failover_robots: Path, tmp_path: Path
) -> AsyncIterator[tuple[Workers, Gateway, Beats]]:
    workers = Workers(private_nats, failover_robots, tmp_path)
    for role, ids in INSTANCES.items():
        for instance in ids:
            workers.start(role, instance)
    gateway = await Gateway.connect(private_nats)
    beats = await watch_heartbeats(gateway.bus)
    try:
        await wait_until(lambda: beats.alive([i for ids in INSTANCES.values() for i in ids]), 60, "workers")
        yield workers, gateway, beats
    finally:
        workers.stop_all()
        await gateway.close()
