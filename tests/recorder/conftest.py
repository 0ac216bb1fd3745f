"""Recorder fixtures: a private JetStream NATS, a fresh Postgres schema and streams per test, Redis
keys cleaned up, a TCP gate that makes a store unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import asyncpg
import nats
import nats.js.errors
import pytest
import redis.asyncio as aioredis

from voiceplatform.bus.nats import NatsBus
from voiceplatform_devstack.devinfra import EmbeddedNats, TcpGate
from vp_recorder.app import RecorderService
from vp_recorder.settings import RecorderSettings
from vp_recorder.stores.postgres import quote_ident

# the recorder API's bearer tokens in every test's settings (test_api_auth covers the roles)
OPERATOR_TOKEN = "test-operator-token-0123456789"
READONLY_TOKEN = "test-readonly-token-0123456789"


def new_call_id() -> str:
    return f"rec-{uuid.uuid4().hex[:12]}"


def make_settings(postgres_dsn: str, redis_url: str, schema: str, **overrides: object) -> RecorderSettings:
    """Settings of one test: its own Postgres schema and its own streams (deleted after the test)."""
    suffix = schema.rsplit("_", 1)[-1].upper()
    values: dict[str, object] = {
        "POSTGRES_DSN": postgres_dsn,
        "REDIS_URL": redis_url,
        "MONGO_URI": None,
        "postgres_schema": schema,
        "stream_name": f"VPT_EVENTS_{suffix}",
        "parked_stream_name": f"VPT_PARKED_{suffix}",
        "store_retry_min_s": 0.05,
        "store_retry_max_s": 0.3,
        "call_logs": False,
        "api_operator_token": OPERATOR_TOKEN,
        "api_readonly_token": READONLY_TOKEN,
    }
    values.update(overrides)
    return RecorderSettings(**values)  # type: ignore[arg-type]


async def wait_until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def stream_messages(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def settle(service: RecorderService, nats_url: str, events: int, within_s: float = 10.0) -> None:
    """Wait until the stream holds ``events`` events and every store has written (or parked) them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while await stream_messages(nats_url, service.settings.stream_name) < events:
        if loop.time() > deadline:
            raise AssertionError("events did not reach the stream")
        await asyncio.sleep(0.02)
    while not await service.caught_up():
        if loop.time() > deadline:
            raise AssertionError(f"stores did not catch up: {service.health()['stores']}")
        await asyncio.sleep(0.02)


async def delete_streams(nats_url: str, *names: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture(scope="package")
def js_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS server of the recorder tests' own: their streams overlap no one else's subjects."""
    server = EmbeddedNats.start(tmp_path_factory.mktemp("nats-js"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def gateway_bus(js_nats_url: str) -> AsyncIterator[NatsBus]:
    bus = await NatsBus.connect(js_nats_url, "gateway")
    try:
        yield bus
    finally:
        await bus.close()


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
async def settings(
    postgres_dsn: str, redis_url: str, pg_schema: str, js_nats_url: str
) -> AsyncIterator[RecorderSettings]:
    made = make_settings(postgres_dsn, redis_url, pg_schema)
    yield made
    await delete_streams(js_nats_url, made.stream_name, made.parked_stream_name)


@pytest.fixture
async def start_recorder(
    js_nats_url: str,
) -> AsyncIterator[Callable[[RecorderSettings], Awaitable[RecorderService]]]:
    """Start recorders (in this process) on the test NATS; drained and disconnected after the test."""
    running: list[tuple[RecorderService, NatsBus]] = []

    async def start(settings: RecorderSettings) -> RecorderService:
        bus = await NatsBus.connect(js_nats_url, "recorder")
        service = RecorderService(settings)
        await service.start(bus)
        running.append((service, bus))
        return service

    yield start
    for service, bus in running:
        await service.drain(5.0)
        await bus.close()


@pytest.fixture
async def recorder(
    settings: RecorderSettings, start_recorder: Callable[[RecorderSettings], Awaitable[RecorderService]]
) -> RecorderService:
    service = await start_recorder(settings)
    await wait_until(lambda: all(service.stores_up().values()))
    return service


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
