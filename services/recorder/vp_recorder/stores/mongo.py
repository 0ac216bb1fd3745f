"""MongoDB: one transcript document per call in collection ``transcriptions``.

The document is a materialized view: on each batch, every call it touches is read back whole from
the event log (``CallEventReader``) and its transcript rebuilt and stored in place, so a write is
idempotent and nothing lives only in recorder memory. The batch's own events are added to what the
reader returns (deduplicated by sequence), so a reader that lags the consumer loses nothing.

A rebuilt document replaces the stored one only when it covers at least as much of the log
(``last_seq``): with several recorders, a slower one never overwrites a newer transcript.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pymongo.errors
import structlog
from motor.motor_asyncio import AsyncIOMotorClient

from voiceplatform import subjects
from voiceplatform.wire import (
    CallEnded,
    CallStarted,
    ControlInterrupt,
    Message,
    PromptSwitched,
    ProviderUsage,
    StageError,
    TurnMetrics,
)
from vp_recorder.mongo_migrate import TRANSCRIPTIONS, MongoDatabase, apply_mongo_migrations
from vp_recorder.stored import CallEventReader, StoredEvent
from vp_recorder.transcript import build_transcript

log = structlog.get_logger("vp_recorder.stores.mongo")

SERVER_SELECTION_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_MS = 5000
# one network round trip; not the driver's timeoutMS, which would also stretch server selection to it
SOCKET_TIMEOUT_MS = 10_000

_TRANSIENT = (OSError, pymongo.errors.ConnectionFailure)  # ConnectionFailure: AutoReconnect and kin


class CallReadError(ConnectionError):
    """The event log could not be read back (NATS down): transient, the batch is tried again."""


def mongo_document(transcript: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The transcript as stored: call times as BSON dates (queried and indexed), ``updated_at``."""
    doc = dict(transcript)
    for name in ("started_at", "ended_at"):
        ts_ms = transcript.get(f"{name}_ms")
        doc[name] = datetime.fromtimestamp(ts_ms / 1000, tz=UTC) if isinstance(ts_ms, int) else None
    doc["updated_at"] = now or datetime.now(UTC)
    return doc


class MongoStore:
    name = "mongo"
    live = False
    stream_subjects = (
        subjects.ANY_LIFECYCLE,
        subjects.ANY_TURN_REPORT,
        subjects.ANY_CONTROL,
        subjects.ANY_USAGE,
    )

    def __init__(
        self,
        uri: str,
        database: str,
        reader: CallEventReader,
        *,
        server_selection_timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS,
    ) -> None:
        self._uri = uri  # holds a password: never logged
        self.database = database
        self._reader = reader
        self.server_selection_timeout_ms = server_selection_timeout_ms
        self._client: AsyncIOMotorClient[dict[str, Any]] | None = None
        self._db: MongoDatabase | None = None

    def accepts(self, message: Message) -> bool:
        # provider.usage too: attempts cancelled by the call's end are reported after call.ended
        return isinstance(
            message,
            CallStarted
            | CallEnded
            | TurnMetrics
            | PromptSwitched
            | ControlInterrupt
            | StageError
            | ProviderUsage,
        )

    async def connect(self) -> None:
        await self.close()
        client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
            self._uri,
            serverSelectionTimeoutMS=self.server_selection_timeout_ms,
            connectTimeoutMS=CONNECT_TIMEOUT_MS,
            socketTimeoutMS=SOCKET_TIMEOUT_MS,
            tz_aware=True,
            appname="vp-recorder",
        )
        try:
            db = client.get_database(self.database)
            await db.command("ping")
            await apply_mongo_migrations(db)
        except BaseException:
            client.close()
            raise
        self._client, self._db = client, db

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            client.close()

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, _TRANSIENT):
            return True
        # a timeout of the server or the driver, or a write the server asks to retry (failover)
        return isinstance(exc, pymongo.errors.PyMongoError) and (
            exc.timeout or exc.has_error_label("RetryableWriteError")
        )

    async def write(self, events: Sequence[StoredEvent]) -> None:
        db = self._db
        if db is None:
            raise ConnectionError("mongo not connected")
        batch_by_call: dict[str, list[StoredEvent]] = {}
        for event in events:
            batch_by_call.setdefault(event.call_id, []).append(event)
        for call_id, batch in batch_by_call.items():
            try:
                stored = await self._reader.read_call(call_id)
            except Exception as exc:
                raise CallReadError(f"cannot read the events of call {call_id}: {exc!r}") from exc
            transcript = build_transcript([*stored, *batch])
            await self._store(db, transcript)

    async def _store(self, db: MongoDatabase, transcript: dict[str, Any]) -> None:
        call_id, last_seq = transcript["call_id"], transcript["last_seq"]
        doc = mongo_document(transcript)
        not_newer = {"call_id": call_id, "$or": [{"last_seq": {"$lte": last_seq}}, {"last_seq": None}]}
        for _ in range(2):
            try:
                await db[TRANSCRIPTIONS].replace_one(not_newer, doc, upsert=True)
                return
            except pymongo.errors.DuplicateKeyError:
                # the document exists but did not match: either it is newer (keep it), or another
                # recorder inserted it in between (match it again)
                continue
        log.debug("recorder.mongo_newer_transcript_kept", call_id=call_id, last_seq=last_seq)
