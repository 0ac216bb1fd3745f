"""MongoDB transcript store and its migrations.

Tests marked ``mongo`` run against a real MongoDB: ``MONGO_URI`` when set, else a throw-away
container (testcontainers) where Docker works; otherwise they are skipped with the reason. The
failure classification at the end needs no server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pymongo.errors
import pytest
from motor.motor_asyncio import AsyncIOMotorClient

from voiceplatform.wire import AsrFinal, CallEnded, CallStarted, ControlInterrupt, LlmSentence, TurnMetrics
from voiceplatform_devstack.devinfra import free_port
from vp_recorder.mongo_migrate import MIGRATIONS, MongoDatabase, MongoMigration, apply_mongo_migrations
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.mongo import CallReadError, MongoStore, mongo_document

T0 = 1_763_700_000_000
NO_MONGO = "no MongoDB: set MONGO_URI=mongodb://... or run where Docker works (testcontainers)"


class ListReader:
    """The event log of each call, as the recorder's JetStream reader would return it."""

    def __init__(self) -> None:
        self.calls: dict[str, list[StoredEvent]] = {}
        self.reads: list[str] = []
        self.fail: Exception | None = None

    async def read_call(self, call_id: str) -> list[StoredEvent]:
        self.reads.append(call_id)
        if self.fail is not None:
            raise self.fail
        return list(self.calls.get(call_id, []))


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    uri = os.environ.get("MONGO_URI")
    if uri:
        yield uri
        return
    if not docker_works():
        pytest.skip(NO_MONGO)
    from testcontainers.community.mongodb import MongoDbContainer

    with MongoDbContainer("mongo:7.0") as container:
        yield container.get_connection_url()


@pytest.fixture
async def database(mongo_uri: str) -> AsyncIterator[str]:
    """A fresh database name per test, dropped afterwards."""
    name = f"vp_test_{uuid.uuid4().hex[:10]}"
    yield name
    client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
async def db(mongo_uri: str, database: str) -> AsyncIterator[MongoDatabase]:
    client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(
        mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    try:
        yield client.get_database(database)
    finally:
        client.close()


@pytest.fixture
async def store_and_reader(mongo_uri: str, database: str) -> AsyncIterator[tuple[MongoStore, ListReader]]:
    reader = ListReader()
    store = MongoStore(mongo_uri, database, reader)
    await store.connect()
    try:
        yield store, reader
    finally:
        await store.close()


def call_events(call_id: str, first_seq: int = 1) -> list[StoredEvent]:
    msgs = [
        CallStarted(call_id=call_id, robot="bot_a", channel="web", sample_rate=16000, caller="u1", ts_ms=T0),
        AsrFinal(
            call_id=call_id, turn_id="t1", text="привет", audio_ms=800, provider="whisper", ts_ms=T0 + 1500
        ),
        LlmSentence(
            call_id=call_id,
            turn_id="t1",
            index=0,
            text="Добрый день.",
            robot="bot_a",
            sample_rate=16000,
            ts_ms=T0 + 1800,
        ),
        TurnMetrics(
            call_id=call_id,
            turn_id="t1",
            user_text="привет",
            bot_text="Добрый день.",
            speech_end_ts_ms=T0 + 1200,
            asr_final_ts_ms=T0 + 1500,
            first_sentence_ts_ms=T0 + 1800,
            first_audio_ts_ms=T0 + 1900,
            first_played_ts_ms=T0 + 2000,
            ts_ms=T0 + 3000,
        ),
        CallEnded(call_id=call_id, reason="hangup", duration_ms=4000, turns=1, ts_ms=T0 + 4000),
    ]
    return [StoredEvent(first_seq + i, f"vp.call.{call_id}.lifecycle", m) for i, m in enumerate(msgs)]


# ---- needs no server -----------------------------------------------------------------------------


def test_accepts_the_events_that_change_a_transcript() -> None:
    store = MongoStore("mongodb://127.0.0.1:1", "x", ListReader())
    events = call_events("c")
    assert [store.accepts(e.message) for e in events] == [True, False, False, True, True]
    assert store.accepts(ControlInterrupt(call_id="c", turn_id="t1"))


def test_mongo_document_stores_call_times_as_dates() -> None:
    transcript = {
        "call_id": "c",
        "started_at_ms": T0,
        "started_at": "x",
        "ended_at_ms": None,
        "ended_at": None,
    }
    now = datetime(2025, 1, 1, tzinfo=UTC)
    doc = mongo_document(transcript, now=now)
    assert doc["started_at"] == datetime.fromtimestamp(T0 / 1000, tz=UTC)
    assert doc["ended_at"] is None
    assert doc["updated_at"] == now
    assert doc["started_at_ms"] == T0
    assert transcript["started_at"] == "x"  # the transcript itself is left as it was


async def test_unreachable_server_is_transient_and_fails_fast() -> None:
    port = free_port()  # nothing listens there
    store = MongoStore(
        f"mongodb://127.0.0.1:{port}", "vp_test", ListReader(), server_selection_timeout_ms=300
    )
    started = time.monotonic()
    with pytest.raises(pymongo.errors.PyMongoError) as caught:
        await store.connect()
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, pymongo.errors.ServerSelectionTimeoutError)
    assert store.is_transient(caught.value)
    # never connected: a write is refused as "down", not as a bad event
    with pytest.raises(ConnectionError) as not_connected:
        await store.write(call_events("c"))
    assert store.is_transient(not_connected.value)
    await store.close()


def test_is_transient_tells_an_outage_from_a_rejected_document() -> None:
    store = MongoStore("mongodb://127.0.0.1:1", "x", ListReader())
    assert store.is_transient(pymongo.errors.AutoReconnect("primary stepped down"))
    assert store.is_transient(pymongo.errors.NetworkTimeout("timed out"))
    assert store.is_transient(pymongo.errors.ExecutionTimeout("operation exceeded time limit", code=50))
    assert store.is_transient(ConnectionRefusedError())
    assert store.is_transient(CallReadError("nats down"))
    assert not store.is_transient(pymongo.errors.DocumentTooLarge("too big"))
    assert not store.is_transient(pymongo.errors.WriteError("validation failed", code=121))
    assert not store.is_transient(ValueError("bug"))


# ---- real MongoDB ----------------------------------------------------------------------------------


@pytest.mark.mongo
async def test_connect_applies_migrations_and_creates_indexes(
    store_and_reader: tuple[MongoStore, ListReader], db: MongoDatabase
) -> None:
    recorded = [doc async for doc in db["schema_migrations"].find({})]
    assert [(d["_id"], d["name"]) for d in recorded] == [("001", "transcriptions_indexes")]
    indexes = await db["transcriptions"].index_information()
    keys = {name: (info["key"], bool(info.get("unique"))) for name, info in indexes.items()}
    assert keys["call_id_unique"] == ([("call_id", 1)], True)
    assert keys["started_at_desc"] == ([("started_at", -1)], False)
    assert keys["robot_started_at_desc"] == ([("robot", 1), ("started_at", -1)], False)
    assert keys["status"] == ([("status", 1)], False)
    assert keys["caller"] == ([("caller", 1)], False)


@pytest.mark.mongo
async def test_migrations_are_idempotent(db: MongoDatabase) -> None:
    assert await apply_mongo_migrations(db) == ["transcriptions_indexes"]
    assert await apply_mongo_migrations(db) == []
    # a migration run again (two recorders starting together) changes nothing and fails nothing
    await db["schema_migrations"].delete_many({})
    assert await apply_mongo_migrations(db) == ["transcriptions_indexes"]
    assert await db["schema_migrations"].count_documents({}) == 1
    assert len(await db["transcriptions"].index_information()) == 6  # _id + the five

    ran: list[str] = []

    async def second(database: MongoDatabase) -> None:
        ran.append(database.name)

    more = (*MIGRATIONS, MongoMigration("002", "second", second))
    assert await apply_mongo_migrations(db, more) == ["second"]
    assert await apply_mongo_migrations(db, more) == []
    assert ran == [db.name]


@pytest.mark.mongo
async def test_write_upserts_one_document_per_call(
    store_and_reader: tuple[MongoStore, ListReader], db: MongoDatabase
) -> None:
    store, reader = store_and_reader
    call_id = f"mongo-{uuid.uuid4().hex[:8]}"
    events = call_events(call_id)
    reader.calls[call_id] = events[:4]  # the log so far: the call is active

    batch = [e for e in events[:4] if store.accepts(e.message)]
    await store.write(batch)
    await store.write(batch)  # redelivered after a crash
    assert await db["transcriptions"].count_documents({"call_id": call_id}) == 1
    doc = await db["transcriptions"].find_one({"call_id": call_id})
    assert doc is not None
    assert doc["status"] == "active"
    assert doc["started_at"] == datetime.fromtimestamp(T0 / 1000, tz=UTC)
    assert doc["ended_at"] is None
    assert isinstance(doc["updated_at"], datetime)
    assert [(s["role"], s["text"]) for s in doc["segments"]] == [
        ("user", "привет"),
        ("assistant", "Добрый день."),
    ]
    assert doc["segments"][1]["voice_to_voice_ms"] == 800
    assert doc["metadata"]["usage"]["tts_characters"] == len("Добрый день.")
    assert len(doc["pipeline_log"]) == 4
    assert reader.reads == [call_id, call_id]

    # call.ended is in the batch but not yet readable: the batch's own events still count
    await store.write([events[4]])
    doc = await db["transcriptions"].find_one({"call_id": call_id})
    assert doc is not None
    assert doc["status"] == "ended" and doc["end_reason"] == "hangup" and doc["duration_sec"] == 4.0
    assert doc["ended_at"] == datetime.fromtimestamp((T0 + 4000) / 1000, tz=UTC)
    assert doc["last_seq"] == events[4].seq
    assert await db["transcriptions"].count_documents({}) == 1


@pytest.mark.mongo
async def test_batch_of_several_calls_and_an_older_rebuild(
    store_and_reader: tuple[MongoStore, ListReader], db: MongoDatabase
) -> None:
    store, reader = store_and_reader
    a, b = call_events("call-a", first_seq=1), call_events("call-b", first_seq=10)
    reader.calls = {"call-a": a, "call-b": b}
    await store.write([a[0], b[0], a[4], b[4]])
    assert sorted(reader.reads) == ["call-a", "call-b"]  # each call rebuilt once per batch
    assert await db["transcriptions"].count_documents({"status": "ended"}) == 2

    # a slower recorder rebuilt call-a from less of the log: the newer document stays
    reader.calls["call-a"] = a[:2]
    await store.write([a[0]])
    doc = await db["transcriptions"].find_one({"call_id": "call-a"})
    assert doc is not None and doc["status"] == "ended" and doc["last_seq"] == a[4].seq


@pytest.mark.mongo
async def test_reader_failure_is_transient(store_and_reader: tuple[MongoStore, ListReader]) -> None:
    store, reader = store_and_reader
    reader.fail = TimeoutError()
    with pytest.raises(CallReadError) as caught:
        await store.write(call_events("call-x")[:1])
    assert store.is_transient(caught.value)
