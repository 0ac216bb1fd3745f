"""Migrations: applied once, safe to re-run, safe when two recorders start together."""

from __future__ import annotations

import asyncio

import asyncpg

from vp_recorder.migrate import apply_migrations, load_migrations
from vp_recorder.stores.postgres import quote_ident


async def _connect(postgres_dsn: str, schema: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(postgres_dsn)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    await conn.execute(f"SET search_path TO {quote_ident(schema)}")
    return conn


def test_migration_files_are_numbered_in_order() -> None:
    migrations = load_migrations()
    assert migrations[0].name == "001_init.sql"
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)


async def test_apply_twice_is_a_no_op(postgres_dsn: str, pg_schema: str) -> None:
    conn = await _connect(postgres_dsn, pg_schema)
    try:
        assert await apply_migrations(conn) == [m.name for m in load_migrations()]
        assert await apply_migrations(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", pg_schema)
        }
        assert {"calls", "call_turns", "scenarios", "users", "schema_migrations"} <= tables
        indexes = {
            r["indexdef"].split(" USING ")[1]
            for r in await conn.fetch(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'calls'", pg_schema
            )
        }
        assert {
            "btree (started_at DESC)",
            "btree (robot, started_at DESC)",
            "btree (status)",
            "btree (caller)",
        } <= indexes
    finally:
        await conn.close()


async def test_two_recorders_migrating_at_once_apply_once(postgres_dsn: str, pg_schema: str) -> None:
    first, second = await _connect(postgres_dsn, pg_schema), await _connect(postgres_dsn, pg_schema)
    try:
        results = await asyncio.gather(apply_migrations(first), apply_migrations(second))
        assert sorted(results) == [[], [m.name for m in load_migrations()]]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
    finally:
        await first.close()
        await second.close()


TRIGRAM_INDEXES = {
    "calls_call_id_trgm_idx": "calls",
    "calls_caller_trgm_idx": "calls",
    "call_turns_user_text_trgm_idx": "call_turns",
    "call_turns_bot_text_trgm_idx": "call_turns",
}


async def test_the_call_search_is_served_by_trigram_indexes(postgres_dsn: str, pg_schema: str) -> None:
    """Migration 008 (pg_trgm ships with the server here): one trigram index per searched column,
    and the console search's predicates can use them (the operator class found by its schema)."""
    conn = await _connect(postgres_dsn, pg_schema)
    try:
        await apply_migrations(conn)
        found = {
            r["indexname"]: r["tablename"]
            for r in await conn.fetch(
                "SELECT indexname, tablename FROM pg_indexes"
                " WHERE schemaname = $1 AND indexdef LIKE '%gin_trgm_ops%'",
                pg_schema,
            )
        }
        assert found == TRIGRAM_INDEXES
        await conn.execute("SET enable_seqscan = off")  # a few rows: only an index can answer
        plans = {
            "call_turns": "SELECT call_id FROM call_turns WHERE user_text ILIKE $1 OR bot_text ILIKE $1",
            "calls": "SELECT call_id FROM calls WHERE call_id ILIKE $1 OR caller ILIKE $1",
        }
        for table, sql in plans.items():
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", "%доставка%"))
            for index, of in TRIGRAM_INDEXES.items():
                if of == table:
                    assert f"Bitmap Index Scan on {index}" in plan, plan
    finally:
        await conn.close()


async def test_the_call_search_finds_the_same_calls_with_and_without_its_indexes(
    postgres_dsn: str, pg_schema: str
) -> None:
    """The indexes only speed the search up: dropped (pg_trgm missing), the same calls are found."""
    from vp_recorder.call_query import PLANNER_SETTINGS, list_calls_query

    conn = await _connect(postgres_dsn, pg_schema)
    try:
        await apply_migrations(conn)
        for name, value in PLANNER_SETTINGS.items():
            await conn.execute(f"SET {name} = {value}")
        await conn.executemany(
            "INSERT INTO calls (call_id, caller, started_at) VALUES ($1, $2, now() - $3 * interval '1 s')",
            [(f"fs-{i:04d}", f"7900{i:07d}", i) for i in range(200)],
        )
        said = ["Хочу Узнать про доставку" if i % 7 else "оплата картой" for i in range(200)]
        await conn.executemany(
            "INSERT INTO call_turns (call_id, turn_id, user_text, bot_text) VALUES ($1, 't1', $2, 'Слушаю')",
            [(f"fs-{i:04d}", text) for i, text in enumerate(said)],
        )
        await conn.execute("ANALYZE calls; ANALYZE call_turns")

        async def ids(q: str) -> list[str]:
            sql, args, _ = list_calls_query({"q": q, "limit": "500"})
            return [r["call_id"] for r in await conn.fetch(sql, *args)]

        searches = ("ДОСТАВКУ", "оплата", "0000123", "fs-01", "слушаю", "нет такого")
        indexed = {q: await ids(q) for q in searches}
        for index in TRIGRAM_INDEXES:
            await conn.execute(f"DROP INDEX {quote_ident(index)}")
        assert {q: await ids(q) for q in searches} == indexed
        assert len(indexed["ДОСТАВКУ"]) == 200 - 29 and len(indexed["оплата"]) == 29
        assert indexed["0000123"] == ["fs-0123"] and len(indexed["fs-01"]) == 100
        assert indexed["нет такого"] == []
    finally:
        await conn.close()
