"""The directory (users, scenarios) on real PostgreSQL and its scenario cache on real Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from voiceplatform_devstack.devinfra import free_port
from vp_recorder.directory import get_scenario, record_caller, sync_scenarios
from vp_recorder.migrate import apply_migrations, load_migrations
from vp_recorder.scenario_cache import SCENARIO_TTL_S, ScenarioCache, scenario_key
from vp_recorder.stores.postgres import quote_ident

REPO = Path(__file__).resolve().parents[2]
ROBOTS = REPO / "robots"
# (robot, scenario) rows the repository's robots/ folder gives
REPO_SCENARIOS = {
    ("pipeline_russian", "default"),
    ("realtime_russian", "default"),
    ("llm_script_russian", "default"),
    ("topic_prompts_russian", "default"),
    ("topic_prompts_russian", "pets"),
    ("topic_prompts_russian", "earning"),
    ("topic_prompts_russian", "children"),
}
T0 = datetime(2026, 2, 25, 22, 43, tzinfo=UTC)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect(postgres_dsn: str, pg_schema: str) -> AsyncIterator[Connect]:
    """Connections on the test's own schema (dropped by ``pg_schema`` afterwards)."""
    opened: list[asyncpg.Connection] = []

    async def make() -> asyncpg.Connection:
        conn = await asyncpg.connect(postgres_dsn)
        opened.append(conn)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(pg_schema)}")
        await conn.execute(f"SET search_path TO {quote_ident(pg_schema)}")
        return conn

    yield make
    for conn in opened:
        await conn.close()


@pytest.fixture
async def db(connect: Connect) -> asyncpg.Connection:
    conn = await connect()
    await apply_migrations(conn)
    return conn


def copy_robots(into: Path, rename: dict[str, str] | None = None) -> Path:
    """A copy of the repository's robots (without audio), folders renamed as asked."""
    robots = into / "robots"
    for folder in sorted(p for p in ROBOTS.iterdir() if (p / "config.json").is_file()):
        target = robots / (rename or {}).get(folder.name, folder.name)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.wav", "logs", ".env"))
    return robots


async def user_row(conn: asyncpg.Connection, phone: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT calls_count, first_call_at, last_call_at FROM users WHERE phone = $1", phone
    )


# ---- migrations ----------------------------------------------------------------------------------


async def test_migrations_apply_once_and_003_is_rerunnable(connect: Connect, pg_schema: str) -> None:
    conn = await connect()
    applied = await apply_migrations(conn)
    assert "003_directory.sql" in applied
    assert await apply_migrations(conn) == []
    columns = {
        (r["table_name"], r["column_name"])
        for r in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $1",
            pg_schema,
        )
    }
    assert {
        ("users", "first_call_at"),
        ("users", "last_call_at"),
        ("users", "calls_count"),
        ("scenarios", "content_sha256"),
        ("scenarios", "updated_at"),
        ("user_calls", "call_id"),
        ("user_calls", "phone"),
    } <= columns
    # written with IF NOT EXISTS: running it again (say, by hand) is harmless
    directory_sql = next(m.sql for m in load_migrations() if m.name == "003_directory.sql")
    await conn.execute(directory_sql)


# ---- callers -------------------------------------------------------------------------------------


async def test_record_caller_counts_each_call_once(db: asyncpg.Connection) -> None:
    phone = "+79990000001"
    await record_caller(db, phone, "call-b", T0)
    await record_caller(db, phone, "call-b", T0 + timedelta(minutes=1))  # the same call again
    assert (await user_row(db, phone)) == (1, T0, T0)

    await record_caller(db, phone, "call-c", T0 + timedelta(hours=2))
    await record_caller(db, phone, "call-a", T0 - timedelta(days=1))  # recorded late, happened first
    await record_caller(db, phone, "call-c", T0 + timedelta(hours=2))
    assert (await user_row(db, phone)) == (3, T0 - timedelta(days=1), T0 + timedelta(hours=2))

    await record_caller(db, "+79990000002", "call-d", T0)
    assert (await user_row(db, "+79990000002")) == (1, T0, T0)
    assert (await user_row(db, phone))["calls_count"] == 3  # type: ignore[index]
    assert await db.fetchval("SELECT count(*) FROM user_calls WHERE phone = $1", phone) == 3


async def test_calls_without_a_caller_id_make_no_user(db: asyncpg.Connection) -> None:
    await record_caller(db, "", "web-call", T0)
    assert await db.fetchval("SELECT count(*) FROM users") == 0
    assert await db.fetchval("SELECT count(*) FROM user_calls") == 0


async def test_a_user_made_before_003_gets_counted(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO users (phone, name) VALUES ('+7000', 'Анна')")
    await record_caller(db, "+7000", "call-1", T0)
    assert (await user_row(db, "+7000")) == (1, T0, T0)
    assert await db.fetchval("SELECT name FROM users WHERE phone = '+7000'") == "Анна"


async def test_two_recorders_recording_the_same_call_count_it_once(
    db: asyncpg.Connection, connect: Connect
) -> None:
    other = await connect()
    for n in range(5):
        call_id = f"race-{n}"
        await asyncio.gather(
            record_caller(db, "+7555", call_id, T0), record_caller(other, "+7555", call_id, T0)
        )
    assert (await user_row(db, "+7555"))["calls_count"] == 5  # type: ignore[index]


# ---- scenarios -----------------------------------------------------------------------------------


async def test_sync_the_repository_robots_then_nothing_changes(db: asyncpg.Connection) -> None:
    assert await sync_scenarios(db, ROBOTS) == len(REPO_SCENARIOS)
    rows = await db.fetch("SELECT robot, name, content_sha256 FROM scenarios")
    assert {(r["robot"], r["name"]) for r in rows} == REPO_SCENARIOS
    assert all(len(r["content_sha256"]) == 64 for r in rows)
    assert await sync_scenarios(db, ROBOTS) == 0

    pets = await get_scenario(db, "topic_prompts_russian", "pets")
    assert pets is not None
    robot_dir = ROBOTS / "topic_prompts_russian"
    assert pets["config"] == {
        "prompt": (robot_dir / "prompts" / "pets.txt").read_text(encoding="utf-8").strip(),
        "dialog": json.loads((robot_dir / "dialog.json").read_text(encoding="utf-8")),
    }
    main = await get_scenario(db, "pipeline_russian", "default")
    assert main is not None
    assert main["config"]["prompt"] == (ROBOTS / "pipeline_russian" / "prompt.txt").read_text("utf-8").strip()
    assert datetime.fromisoformat(main["updated_at"]).tzinfo is not None
    assert await get_scenario(db, "pipeline_russian", "pets") is None
    clinic = await get_scenario(db, "llm_script_russian", "default")  # an llm_script robot's recordings
    assert clinic is not None and clinic["config"]["tracks"]["fallthrough"] == "not_understood"


async def test_a_changed_prompt_rewrites_only_its_row(db: asyncpg.Connection, tmp_path: Path) -> None:
    assert await sync_scenarios(db, ROBOTS) == len(REPO_SCENARIOS)
    robots = copy_robots(tmp_path)
    assert await sync_scenarios(db, robots) == 0  # same content from another folder
    before = await get_scenario(db, "topic_prompts_russian", "pets")
    untouched = await get_scenario(db, "topic_prompts_russian", "earning")

    pets_file = robots / "topic_prompts_russian" / "prompts" / "pets.txt"
    pets_file.write_text("Ты консультант зоомагазина. Отвечай коротко.\n", encoding="utf-8")
    assert await sync_scenarios(db, robots) == 1
    after = await get_scenario(db, "topic_prompts_russian", "pets")
    assert before is not None and after is not None
    assert after["config"]["prompt"] == "Ты консультант зоомагазина. Отвечай коротко."
    assert after["content_sha256"] != before["content_sha256"]
    assert after["updated_at"] > before["updated_at"]
    assert await get_scenario(db, "topic_prompts_russian", "earning") == untouched
    assert await sync_scenarios(db, robots) == 0


async def test_a_dialog_change_rewrites_every_prompt_of_the_robot(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    robots = copy_robots(tmp_path)
    await sync_scenarios(db, robots)
    dialog_file = robots / "pipeline_russian" / "dialog.json"
    dialog = json.loads(dialog_file.read_text(encoding="utf-8"))
    dialog["start"] = "other"
    dialog_file.write_text(json.dumps(dialog, ensure_ascii=False), encoding="utf-8")
    assert await sync_scenarios(db, robots) == 1  # pipeline_russian has one prompt
    scenario = await get_scenario(db, "pipeline_russian", "default")
    assert scenario is not None and scenario["config"]["dialog"]["start"] == "other"


async def test_a_broken_robot_is_skipped_and_the_others_sync(db: asyncpg.Connection, tmp_path: Path) -> None:
    robots = copy_robots(tmp_path)
    (robots / "pipeline_russian" / "config.json").write_text(
        '{"vad": {"provider": "nope"}}', encoding="utf-8"
    )
    assert await sync_scenarios(db, robots) == len(REPO_SCENARIOS) - 1
    assert await get_scenario(db, "pipeline_russian", "default") is None


# ---- the scenario cache ----------------------------------------------------------------------------


class CountingLoader:
    """get_scenario from PostgreSQL, counting how often the cache had to ask."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.calls = 0

    async def __call__(self, robot: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        return await get_scenario(self.conn, robot, name)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    async for key in client.scan_iter(match="scenario:dirtest_*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
async def robot(db: asyncpg.Connection, tmp_path: Path) -> str:
    """A robot with a name of its own (Redis is shared), its scenarios synced into PostgreSQL."""
    name = f"dirtest_{uuid.uuid4().hex[:10]}"
    await sync_scenarios(db, copy_robots(tmp_path, rename={"topic_prompts_russian": name}))
    return name


async def test_cache_miss_fills_then_hits(db: asyncpg.Connection, redis: aioredis.Redis, robot: str) -> None:
    loader = CountingLoader(db)
    cache = ScenarioCache(redis, loader)
    first = await cache.get(robot, "pets")
    assert first is not None and first["robot"] == robot and loader.calls == 1
    assert 0 < await redis.ttl(scenario_key(robot, "pets")) <= SCENARIO_TTL_S == 300
    assert json.loads(await redis.get(scenario_key(robot, "pets")) or "null") == first

    # a hit: PostgreSQL is not asked, even when it changed meanwhile (the TTL bounds that)
    await db.execute("UPDATE scenarios SET config = '{}'::jsonb WHERE robot = $1 AND name = 'pets'", robot)
    assert await cache.get(robot, "pets") == first
    assert loader.calls == 1


async def test_invalidate_drops_every_scenario_of_the_robot_only(
    db: asyncpg.Connection, redis: aioredis.Redis, robot: str
) -> None:
    loader = CountingLoader(db)
    cache = ScenarioCache(redis, loader)
    for name in ("default", "pets", "earning"):
        await cache.get(robot, name)
    other_key = scenario_key(f"{robot}x", "pets")  # a robot whose name starts the same
    await redis.set(other_key, "{}", ex=60)

    assert await cache.invalidate(robot) == 3
    assert await redis.exists(scenario_key(robot, "pets")) == 0
    assert await redis.exists(other_key) == 1
    await cache.get(robot, "pets")
    assert loader.calls == 4
    assert await cache.invalidate(robot) == 1
    assert await cache.invalidate(robot) == 0


async def test_missing_scenarios_are_not_cached(
    db: asyncpg.Connection, redis: aioredis.Redis, robot: str
) -> None:
    cache = ScenarioCache(redis, CountingLoader(db))
    assert await cache.get(robot, "no-such-prompt") is None
    assert await redis.exists(scenario_key(robot, "no-such-prompt")) == 0


async def test_a_bad_entry_or_a_redis_outage_falls_back_to_postgres(
    db: asyncpg.Connection, redis: aioredis.Redis, robot: str
) -> None:
    await redis.set(scenario_key(robot, "pets"), "not json", ex=60)
    loader = CountingLoader(db)
    scenario = await ScenarioCache(redis, loader).get(robot, "pets")
    assert scenario is not None and scenario["name"] == "pets" and loader.calls == 1
    assert json.loads(await redis.get(scenario_key(robot, "pets")) or "null") == scenario  # repaired

    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/15", socket_connect_timeout=1)
    try:
        assert await ScenarioCache(down, loader).get(robot, "earning") is not None
        assert loader.calls == 2
    finally:
        await down.aclose()
