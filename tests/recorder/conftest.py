"""Recorder fixtures: a fresh Postgres schema per test, Redis keys cleaned up, a TCP gate."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.devinfra import free_port
from vp_recorder.app import RecorderService
from vp_recorder.settings import RecorderSettings
from vp_recorder.stores.postgres import quote_ident


def new_call_id() -> str:
    return f"rec-{uuid.uuid4().hex[:12]}"


def make_settings(postgres_dsn: str, redis_url: str, schema: str) -> RecorderSettings:
    return RecorderSettings(
        POSTGRES_DSN=postgres_dsn,
        REDIS_URL=redis_url,
        MONGO_URI=None,
        postgres_schema=schema,
        store_retry_min_s=0.05,
        store_retry_max_s=0.3,
    )


async def wait_until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def settle(service: RecorderService, events: int, within_s: float = 5.0) -> None:
    """Wait until the recorder handled ``events`` events and every store wrote them."""
    await wait_until(lambda: service.events_received >= events, within_s)
    for writer in service.writers:
        assert await writer.flush(within_s), f"{writer.name} did not flush"


@pytest.fixture
async def pg_schema(postgres_dsn: str) -> AsyncIterator[str]:
    schema = f"rec_test_{uuid.uuid4().hex[:10]}"
    yield schema
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def pg(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose search_path is the test's schema (created by the recorder at start)."""
    conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    async for key in client.scan_iter(match="call:rec-*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def settings(postgres_dsn: str, redis_url: str, pg_schema: str) -> RecorderSettings:
    return make_settings(postgres_dsn, redis_url, pg_schema)


@pytest.fixture
async def recorder(broker: MemoryBroker, settings: RecorderSettings) -> AsyncIterator[RecorderService]:
    service = RecorderService(settings)
    await service.start(broker.bus("recorder"))
    await wait_until(lambda: all(service.stores_up().values()))
    try:
        yield service
    finally:
        await service.drain(5.0)


class TcpGate:
    """A loopback port that refuses connections until opened, then forwards to a real server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def url_via_gate(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host_port = f"127.0.0.1:{self.port}"
        new_netloc = f"{netloc[0]}@{host_port}" if len(netloc) == 2 else host_port
        return parts._replace(netloc=new_netloc).geturl()


@pytest.fixture
async def make_gate() -> AsyncIterator[Callable[[str], Awaitable[TcpGate]]]:
    gates: list[TcpGate] = []

    async def make(url: str) -> TcpGate:
        parts = urlsplit(url)
        default_port = 6379 if parts.scheme.startswith("redis") else 5432
        gate = TcpGate(parts.hostname or "127.0.0.1", parts.port or default_port)
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        with contextlib.suppress(Exception):
            await gate.close()
