"""Versioned SQL migrations: ``migrations/NNN_name.sql`` applied in order, each exactly once.

All pending files run in one transaction that first takes a transaction-scoped advisory lock, so
recorders starting together apply them once (the others wait, then find nothing to do) and a
failing file leaves nothing half-applied. Applied versions are rows of ``schema_migrations`` in the
connection's ``search_path`` schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

log = structlog.get_logger("vp_recorder.migrate")

# any constant shared by every recorder; 0x7670 = "vp"
MIGRATION_LOCK_KEY = 0x7670_7265_636F
_FILE_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = resources.files("vp_recorder") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(match.group(1), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


# makes the call search's trigram indexes where pg_trgm can be had (docs/operations.md#call-search)
SEARCH_INDEX_MIGRATION = "008_search_index.sql"


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the names applied now (empty when up to date)."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.name)
    if applied_now:
        log.info("recorder.migrations_applied", migrations=applied_now)
    if SEARCH_INDEX_MIGRATION in applied_now and not await _search_indexed(conn):
        log.warning(
            "recorder.search_unindexed",
            why="pg_trgm is not available to this database user: the call search reads every call",
            see="docs/operations.md#call-search",
        )
    return applied_now


async def _search_indexed(conn: asyncpg.Connection) -> bool:
    found = await conn.fetchval(
        "SELECT count(*) FROM pg_indexes"
        " WHERE schemaname = current_schema() AND indexdef LIKE '%gin_trgm_ops%'"
    )
    return bool(found)
