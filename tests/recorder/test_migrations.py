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
