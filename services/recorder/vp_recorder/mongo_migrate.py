"""Versioned MongoDB migrations: code, applied in version order, each recorded once.

Applied versions are documents ``{_id: version, name, applied_at}`` of collection
``schema_migrations``. MongoDB has no transaction-scoped lock like PostgreSQL's advisory lock, so
recorders starting together may both run a pending migration: every migration must be idempotent
(``create_index`` with the same keys and options is).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymongo
import pymongo.errors
import structlog
from motor.motor_asyncio import AsyncIOMotorDatabase

log = structlog.get_logger("vp_recorder.mongo_migrate")

MIGRATIONS_COLLECTION = "schema_migrations"
TRANSCRIPTIONS = "transcriptions"

MongoDatabase = AsyncIOMotorDatabase[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class MongoMigration:
    version: str
    name: str
    apply: Callable[[MongoDatabase], Awaitable[None]]


async def _transcriptions_indexes(db: MongoDatabase) -> None:
    transcriptions = db[TRANSCRIPTIONS]
    await transcriptions.create_index("call_id", unique=True, name="call_id_unique")
    await transcriptions.create_index([("started_at", pymongo.DESCENDING)], name="started_at_desc")
    await transcriptions.create_index(
        [("robot", pymongo.ASCENDING), ("started_at", pymongo.DESCENDING)], name="robot_started_at_desc"
    )
    await transcriptions.create_index("status", name="status")
    await transcriptions.create_index("caller", name="caller")


MIGRATIONS: tuple[MongoMigration, ...] = (
    MongoMigration("001", "transcriptions_indexes", _transcriptions_indexes),
)


def check_migrations(migrations: tuple[MongoMigration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(versions) or len(set(versions)) != len(versions):
        raise RuntimeError(f"mongo migration versions must be unique and ascending: {versions}")


async def apply_mongo_migrations(
    db: MongoDatabase, migrations: tuple[MongoMigration, ...] = MIGRATIONS
) -> list[str]:
    """Apply pending migrations in order; return the names applied now (empty when up to date)."""
    check_migrations(migrations)
    recorded = db[MIGRATIONS_COLLECTION]
    done = {str(doc["_id"]) async for doc in recorded.find({}, {"_id": 1})}
    applied_now: list[str] = []
    for migration in migrations:
        if migration.version in done:
            continue
        await migration.apply(db)
        # another recorder may record it at the same moment
        with contextlib.suppress(pymongo.errors.DuplicateKeyError):
            await recorded.update_one(
                {"_id": migration.version},
                {"$setOnInsert": {"name": migration.name, "applied_at": datetime.now(UTC)}},
                upsert=True,
            )
        applied_now.append(migration.name)
    if applied_now:
        log.info("recorder.mongo_migrations_applied", migrations=applied_now)
    return applied_now
