"""Embedded servers: each starts on a free port, serves a real client round trip, and stops."""

from __future__ import annotations

import shutil
import stat
import time
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from voiceplatform_devstack.devinfra import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    port_open,
)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_embedded_nats_round_trip_and_jetstream(tmp_path: Path) -> None:
    server = EmbeddedNats.start(tmp_path / "nats")
    try:
        assert server.running and port_open("127.0.0.1", server.port)
        nc = await nats.connect(server.url)
        try:

            async def pong(msg: nats.aio.msg.Msg) -> None:
                await msg.respond(b"pong:" + msg.data)

            await nc.subscribe("devinfra.ping", cb=pong)
            reply = await nc.request("devinfra.ping", b"ping", timeout=2)
            assert reply.data == b"pong:ping"
            # JetStream is on (-js): a KV bucket round trip works
            kv = await nc.jetstream().create_key_value(bucket="devinfra_test")
            await kv.put("k", b"v")
            assert (await kv.get("k")).value == b"v"
        finally:
            await nc.close()
    finally:
        server.stop()
    assert not server.running
    assert server.process.returncode == 0
    assert not port_open("127.0.0.1", server.port)
    server.stop()  # idempotent


def _environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_embedded_nats_runs_one_scheduler_thread_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    with EmbeddedNats.start(tmp_path / "default") as server:
        assert _environment(server.process.pid)["GOMAXPROCS"] == "1"
    monkeypatch.setenv("GOMAXPROCS", "4")  # an operator's choice wins
    with EmbeddedNats.start(tmp_path / "told") as server:
        assert _environment(server.process.pid)["GOMAXPROCS"] == "4"


async def test_embedded_redis_round_trip(tmp_path: Path) -> None:
    server = EmbeddedRedis.start(tmp_path / "redis")
    try:
        client = aioredis.from_url(server.url)
        try:
            await client.set("greeting", "привет")
            assert (await client.get("greeting")).decode() == "привет"
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        server.stop()
    assert not server.running
    assert not port_open("127.0.0.1", server.port)


async def test_embedded_postgres_round_trip_from_a_private_folder(tmp_path: Path) -> None:
    workdir = tmp_path / "pg"  # pytest's tmp folders are 0700: the server user cannot reach them
    started = time.monotonic()
    server = EmbeddedPostgres.start(workdir, database="devinfra")
    startup_s = time.monotonic() - started
    try:
        assert server.dsn.endswith("/devinfra")
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute("CREATE TABLE pets (name text)")
            await conn.execute("INSERT INTO pets VALUES ($1)", "собака")
            assert await conn.fetchval("SELECT name FROM pets") == "собака"
            assert await conn.fetchval("SELECT current_database()") == "devinfra"
        finally:
            await conn.close()
    finally:
        server.stop()
    assert not server.running
    assert not port_open("127.0.0.1", server.port)
    assert startup_s < 30


async def test_embedded_postgres_reuses_a_reachable_workdir() -> None:
    # a world-searchable work folder (like `vp up`'s) holds the cluster itself, so data survives a restart
    workdir = Path("/tmp") / f"vp-devinfra-test-{uuid.uuid4().hex[:8]}"
    try:
        first = EmbeddedPostgres.start(workdir)
        try:
            conn = await asyncpg.connect(first.dsn)
            await conn.execute("CREATE TABLE kept (v int)")
            await conn.execute("INSERT INTO kept VALUES (7)")
            await conn.close()
        finally:
            first.stop()
        assert (workdir / "pgdata" / "PG_VERSION").is_file()
        second = EmbeddedPostgres.start(workdir)
        try:
            conn = await asyncpg.connect(second.dsn)
            assert await conn.fetchval("SELECT v FROM kept") == 7
            await conn.close()
        finally:
            second.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_each_start_picks_its_own_port(tmp_path: Path) -> None:
    first = EmbeddedRedis.start(tmp_path / "a")
    second = EmbeddedRedis.start(tmp_path / "b")
    try:
        assert first.port != second.port
        assert port_open("127.0.0.1", _port_of(first.url)) and port_open("127.0.0.1", _port_of(second.url))
    finally:
        first.stop()
        second.stop()
    assert free_port() > 0


@pytest.mark.parametrize("server_cls", [EmbeddedNats, EmbeddedRedis])
def test_context_manager_stops(tmp_path: Path, server_cls: type[EmbeddedNats] | type[EmbeddedRedis]) -> None:
    with server_cls.start(tmp_path) as server:
        assert server.running
    assert not server.running


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_embedded_redis_with_a_password(tmp_path: Path) -> None:
    password = "redis-" + uuid.uuid4().hex
    server = EmbeddedRedis.start(tmp_path / "redis", password=password)
    try:
        assert password not in _cmdline(server.process.pid)  # in a 0600 config file instead
        assert stat.S_IMODE((tmp_path / "redis" / "redis.conf").stat().st_mode) == 0o600
        anonymous = aioredis.from_url(f"redis://127.0.0.1:{server.port}/0")
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.set("k", "v")
        await anonymous.aclose()
        client = aioredis.from_url(server.url)
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        await client.aclose()
    finally:
        server.stop()


async def test_embedded_postgres_takes_a_password_even_on_a_trust_cluster() -> None:
    # a data dir from before passwords (trust) is closed on the next start with a password
    workdir = Path("/tmp") / f"vp-devinfra-test-{uuid.uuid4().hex[:8]}"
    password = "pg-" + uuid.uuid4().hex
    try:
        EmbeddedPostgres.start(workdir).stop()
        server = EmbeddedPostgres.start(workdir, password=password)
        try:
            assert password in server.dsn and password not in _cmdline(server.process.pid)
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/vp")
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(f"postgresql://postgres:wrong@127.0.0.1:{server.port}/vp")
            conn = await asyncpg.connect(server.dsn)
            assert await conn.fetchval("SELECT current_database()") == "vp"
            await conn.close()
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
