"""What a batch costs the stores (round trips, statements) and what a call's end reads back."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from nats.aio.msg import Msg
from redis.asyncio.connection import AbstractConnection

from bench.recorder_load import SimulatedCall
from tests.recorder.conftest import new_call_id, settle, wait_until
from tests.recorder.test_recorder import StartRecorder, call_sequence, play
from voiceplatform.bus.jetstream import stream_sequence
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import (
    AsrFinal,
    CallRecording,
    CallStarted,
    LlmDone,
    PromptSwitched,
    StageError,
    TurnMetrics,
    encode,
)
from vp_recorder import public as public_module
from vp_recorder.ledger import CallLedger
from vp_recorder.public import PublicEvents
from vp_recorder.reader import JetStreamCallReader
from vp_recorder.settings import RecorderSettings
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.postgres import FIGURE_TYPES, PostgresStore
from vp_recorder.stores.redis import RedisStore
from vp_recorder.stores.redis_script import EVENTS_PER_SCRIPT


def interleaved(*calls: SimulatedCall) -> list[StoredEvent]:
    """The calls' events taking turns, numbered as a stream would number them."""
    streams = [list(call.events()) for call in calls]
    events: list[StoredEvent] = []
    while any(streams):
        for stream in streams:
            if stream:
                subject, msg = stream.pop(0)
                events.append(StoredEvent(len(events) + 1, subject, msg))
    return events


@pytest.fixture
def redis_sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every request a Redis client of this process sends (a pipeline is one)."""
    sent: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    yield sent


async def test_a_redis_batch_is_one_round_trip(
    redis_url: str, redis_client: aioredis.Redis, redis_sends: list[int]
) -> None:
    calls = [SimulatedCall(new_call_id(), turns=4) for _ in range(8)]
    events = interleaved(*calls)
    assert len(events) > EVENTS_PER_SCRIPT  # several scripts, in one round trip
    store = RedisStore(redis_url, public=None)
    await store.connect()
    try:
        redis_sends.clear()
        await store.write(events)
        assert len(redis_sends) == 1, f"{len(events)} events"
    finally:
        await store.close()
    for call in calls:  # and the state is the whole calls'
        history = [json.loads(x) for x in await redis_client.lrange(f"call:{call.call_id}:history", 0, -1)]
        expected = []
        for n in range(1, call.turns + 1):
            said, reply, played = call.texts(n)
            expected += [("user", said), ("assistant", played if call.interrupted(n) else reply)]
        assert [(h["role"], h["text"]) for h in history] == expected
        state = await redis_client.hgetall(f"call:{call.call_id}")
        assert (state["status"], state["turns"]) == ("ended", "4")


async def test_an_event_without_live_state_is_still_published_in_its_place(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    call_id = new_call_id()
    events = [
        StoredEvent(1, "x", CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000)),
        StoredEvent(2, "x", CallRecording(call_id=call_id, action="start", path="/r/a.wav")),
        StoredEvent(3, "x", PromptSwitched(call_id=call_id, turn_id="t1", from_prompt="a", to_prompt="b")),
    ]
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("call_events")
    store = RedisStore(redis_url, public=PublicEvents(StreamStandIn(events)))
    await store.connect()
    try:
        await store.write(events)
        received: list[str] = []
        for _ in range(100):  # get_message answers None for the subscription's own reply too
            item = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if item is not None:
                received.append(json.loads(item["data"])["type"])
            if len(received) == 3:
                break
    finally:
        await store.close()
        await pubsub.aclose()
    assert received == ["call.started", "call.recording", "prompt.switched"]
    state = await redis_client.hgetall(f"call:{call_id}")
    assert (state["status"], state["prompt"]) == ("active", "b")


async def test_a_public_payload_is_built_once_for_both_stores_and_the_same_when_built_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    original = public_module.encode_public

    def counting(event: dict[str, Any]) -> bytes:
        built.append(str(event["id"]))
        return original(event)

    monkeypatch.setattr(public_module, "encode_public", counting)
    events = interleaved(SimulatedCall(new_call_id(), turns=3))
    public = PublicEvents(StreamStandIn(events))
    started = events[0]
    first = await public.payload(started)  # the Redis store's
    assert await public.payload(started) == first  # the NATS store's: not built again
    assert built == [started.event_id]
    assert await public.payload(started) == first  # a redelivery: built again, the same bytes
    assert len(built) == 2
    # the memory is bounded: beyond it, the oldest is built again when asked for
    many = [StoredEvent(n, "x", started.message) for n in range(100, 100 + public_module.RECENT_PAYLOADS + 1)]
    for event in many:
        await public.payload(event)
    built.clear()
    await public.payload(many[0])
    await public.payload(many[-1])
    assert built == [many[0].event_id]


class CountingConnection:
    """An asyncpg connection that counts the statements sent to the server."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.queries: list[str] = []
        self.arguments: list[tuple[Any, ...]] = []

    @property
    def statements(self) -> int:
        return len(self.queries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self.queries.append(query)
        self.arguments.append(args)
        return await self._conn.execute(query, *args, **kwargs)

    async def executemany(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self.queries.append(query)
        self.arguments.append(args)
        return await self._conn.executemany(query, *args, **kwargs)


@pytest.fixture
async def postgres_store(postgres_dsn: str, pg_schema: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(postgres_dsn, pg_schema)
    await store.connect()
    yield store
    await store.close()


async def counted_write(store: PostgresStore, events: list[StoredEvent]) -> CountingConnection:
    conn = store._conn
    assert conn is not None
    counting = CountingConnection(conn)
    store._conn = counting  # type: ignore[assignment]
    try:
        await store.write(events)
    finally:
        store._conn = conn
    return counting


async def statements_for(store: PostgresStore, events: list[StoredEvent]) -> int:
    return (await counted_write(store, events)).statements


async def refreshed_by(store: PostgresStore, events: list[StoredEvent]) -> list[str]:
    """The calls whose derived columns the batch recomputes (record_batch's last argument)."""
    counting = await counted_write(store, events)
    assert counting.statements == 1 and "record_batch(" in counting.queries[0]
    return list(counting.arguments[0][-1])


async def test_a_postgres_batch_costs_the_same_statements_however_many_events(
    postgres_store: PostgresStore, pg: asyncpg.Connection
) -> None:
    small = interleaved(SimulatedCall(new_call_id(), turns=3))
    large = interleaved(*(SimulatedCall(new_call_id(), turns=9) for _ in range(6)))
    assert len(large) > 5 * len(small)
    assert await statements_for(postgres_store, small) == await statements_for(postgres_store, large) == 1
    # and the derived columns are those of the whole calls
    for call_id in {e.call_id for e in large}:
        row = await pg.fetchrow("SELECT status, turns, barge_ins FROM calls WHERE call_id = $1", call_id)
        assert row is not None and tuple(row) == ("ended", 9, 3)


async def figures(pg: asyncpg.Connection, call_id: str) -> tuple[object, ...]:
    row = await pg.fetchrow(
        "SELECT turns, barge_ins, errors, last_prompt, voice_to_voice_p50_ms IS NOT NULL AS v2v"
        " FROM calls WHERE call_id = $1",
        call_id,
    )
    assert row is not None
    return tuple(row)


async def test_only_figure_events_refresh_a_calls_figures_and_late_ones_alone_correct_them(
    postgres_store: PostgresStore, pg: asyncpg.Connection
) -> None:
    call = SimulatedCall(new_call_id(), turns=3)
    events = interleaved(call)
    rest = [e for e in events if e.message.type_name not in FIGURE_TYPES]
    figure_events = [e for e in events if e.message.type_name in FIGURE_TYPES]
    # a batch without figure events leaves the figures alone (and does not recompute them)
    assert await refreshed_by(postgres_store, rest) == []
    assert await figures(pg, call.call_id) == (0, 0, 0, None, False)
    # each figure event, one batch each and last first, refreshes its call from all that is stored
    for event in reversed(figure_events):
        assert await refreshed_by(postgres_store, [event]) == [call.call_id]
    assert await figures(pg, call.call_id) == (3, 1, 0, None, True)
    seq = len(events)
    late = [
        StoredEvent(seq + 1, "x", StageError(call_id=call.call_id, stage="tts", kind="timeout", detail="")),
        StoredEvent(
            seq + 2, "x", PromptSwitched(call_id=call.call_id, turn_id="t", from_prompt="a", to_prompt="b")
        ),
    ]
    for event in late:
        await postgres_store.write([event])
    assert await figures(pg, call.call_id) == (3, 1, 1, "b", True)
    # the whole call again (a redelivery) changes nothing
    await postgres_store.write([*events, *late])
    assert await figures(pg, call.call_id) == (3, 1, 1, "b", True)


async def test_a_turn_twice_in_one_batch_leaves_its_last_account(
    postgres_store: PostgresStore, pg: asyncpg.Connection
) -> None:
    call = SimulatedCall(new_call_id(), turns=2)
    events = interleaved(call)
    again = []
    for event in events:  # each stage's report and the gateway's account of turn 1 come twice
        msg = event.message
        if isinstance(msg, LlmDone | AsrFinal | TurnMetrics) and msg.turn_id == call.turn_id(1):
            changed = (
                msgspec.structs.replace(msg, provider="second")
                if isinstance(msg, LlmDone | AsrFinal)
                else msg
            )
            again.append(StoredEvent(len(events) + len(again) + 1, event.subject, changed))
    await postgres_store.write([*events, *again])
    rows = await pg.fetch(
        "SELECT turn_id, llm_provider, asr_provider FROM call_turns WHERE call_id = $1 ORDER BY turn_id",
        call.call_id,
    )
    assert [tuple(r) for r in rows] == [
        (call.turn_id(1), "second", "second"),
        (call.turn_id(2), "bench", "bench"),
    ]
    assert await figures(pg, call.call_id) == (2, 0, 0, None, True)


async def test_record_batch_reads_the_figure_events_through_the_figure_index(
    postgres_store: PostgresStore, pg: asyncpg.Connection
) -> None:
    source = await pg.fetchval(
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE p.proname = 'record_batch' AND n.nspname = $1",
        postgres_store.schema,
    )
    assert source is not None
    named = re.search(r"e\.type IN \(([^)]*)\)", source)
    assert named is not None
    assert set(re.findall(r"'([a-z_.]+)'", named.group(1))) == set(FIGURE_TYPES)


async def test_the_figure_index_covers_the_figure_types(
    postgres_store: PostgresStore, pg: asyncpg.Connection
) -> None:
    definition = await pg.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'call_events_figures_idx' AND schemaname = $1",
        postgres_store.schema,
    )
    assert definition is not None
    assert set(re.findall(r"'([a-z_.]+)'::text", definition.split(" WHERE ", 1)[1])) == set(FIGURE_TYPES)


async def test_a_call_end_reads_nothing_back(
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    gateway_bus: NatsBus,
    js_nats_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_back: list[str] = []
    original = JetStreamCallReader.read_call

    async def counting(self: JetStreamCallReader, call_id: str) -> list[StoredEvent]:
        read_back.append(call_id)
        return await original(self, call_id)

    monkeypatch.setattr(JetStreamCallReader, "read_call", counting)
    # every store that builds a view of the call: Redis and NATS (summary), the call log
    logs = {"call_logs": True, "call_logs_dir": tmp_path}
    recorder = await start_recorder(settings.model_copy(update=logs))
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    await settle(recorder, js_nats_url, len(events))
    assert read_back == []
    [log_file] = list((tmp_path / "demo" / "logs").glob(f"*{call_id}.json"))
    assert json.loads(log_file.read_text())["events"] == len(events)


class StreamStandIn:
    """A stream read back: every event of each call, counting the reads."""

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        self.reads = 0

    async def read_call(self, call_id: str) -> list[StoredEvent]:
        self.reads += 1
        return [e for e in self.events if e.call_id == call_id]


def note_all(ledger: CallLedger, events: list[StoredEvent]) -> None:
    for event in events:
        ledger.note(event.seq, event, encode(event.message))


async def test_the_ledger_answers_from_memory_only_for_a_call_it_saw_whole() -> None:
    events = interleaved(SimulatedCall(new_call_id(), 3), SimulatedCall(new_call_id(), 3))
    whole, split = events[0].call_id, events[1].call_id
    stream = StreamStandIn(events)
    ledger = CallLedger(stream)
    note_all(ledger, events)
    assert await ledger.read_call(whole) == [e for e in events if e.call_id == whole]
    assert stream.reads == 0

    # another recorder had some of the messages: what this one holds of a call is not enough
    other = CallLedger(stream)
    note_all(other, [e for e in events if e.seq % 5])
    assert await other.read_call(split) == [e for e in events if e.call_id == split]
    assert stream.reads == 1
    await other.read_call(split)  # the read serves the call's later readers
    assert stream.reads == 1
    # readers asking at the same moment (the Redis and NATS stores at a call's end) share one read
    third = CallLedger(stream)
    note_all(third, [e for e in events if e.seq % 5])
    both = await asyncio.gather(third.read_call(split), third.read_call(split))
    assert both[0] == both[1] == [e for e in events if e.call_id == split]
    assert stream.reads == 2


async def test_the_ledger_forgets_ended_calls_first_beyond_its_bound() -> None:
    first, second = SimulatedCall(new_call_id(), 2), SimulatedCall(new_call_id(), 2)
    events = [*interleaved(first), *interleaved(second)]
    events = [StoredEvent(k, e.subject, e.message) for k, e in enumerate(events, start=1)]
    stream = StreamStandIn(events)
    ledger = CallLedger(stream, max_events=len(events) - 1)
    note_all(ledger, events)
    assert not ledger.complete(first.call_id) and ledger.complete(second.call_id)
    assert await ledger.read_call(first.call_id) == [e for e in events if e.call_id == first.call_id]
    assert stream.reads == 1


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.VP_CALL_EVENTS.recorder_redis.2.4242.17.1765000000000000000.3",
        "$JS.ACK.hub.ACCHASH.VP_CALL_EVENTS.recorder_redis.2.4242.17.1765000000000000000.3.tok",
    ],
)
def test_the_stream_sequence_is_the_clients_reading_of_the_ack_subject(reply: str) -> None:
    msg = Msg(_client=None, subject="vp.call.x.lifecycle", reply=reply)  # type: ignore[arg-type]
    assert stream_sequence(msg) == msg.metadata.sequence.stream == 4242


async def test_a_trickle_of_events_is_written_in_one_batch_per_linger(
    settings: RecorderSettings, start_recorder: StartRecorder, gateway_bus: NatsBus, js_nats_url: str
) -> None:
    # a long linger, so however busy the machine the trickle arrives within it; the live stores
    # (public events) and the archives (Postgres) each have their own
    lingers = {"batch_linger_s": 2.0, "archive_linger_s": 2.0}
    recorder = await start_recorder(settings.model_copy(update=lingers))
    events = call_sequence(new_call_id())
    for subject, msg in events:  # one event at a time, as a live call sends them
        await gateway_bus.publish(subject, msg)
        await gateway_bus.client.flush()
        await asyncio.sleep(0.01)
    await settle(recorder, js_nats_url, len(events))
    postgres = recorder.store_consumer("postgres")
    assert postgres.written == len(events)
    # gathered, not one batch per event (usually one or two: the first fetch may come before the
    # others are published; a stalled publisher on a busy machine may split them once more)
    assert postgres.batches <= len(events) // 3
    public = recorder.store_consumer("nats_events")
    assert 0 < public.batches <= len(events) // 3
    assert (postgres.linger_s, public.linger_s) == (2.0, 2.0)


async def test_the_archives_gather_longer_than_the_stores_that_pass_events_on(
    settings: RecorderSettings, start_recorder: StartRecorder
) -> None:
    recorder = await start_recorder(
        settings.model_copy(update={"batch_linger_s": 0.05, "archive_linger_s": 0.25})
    )
    lingers = {c.name: c.linger_s for c in recorder.consumers}
    assert lingers["postgres"] == 0.25
    assert lingers["redis"] == lingers["nats_events"] == 0.05
    # and /health says what each store's consumer reads (this NATS takes several filters)
    await wait_until(lambda: all(c.state == "up" for c in recorder.consumers))
    stores = recorder.health()["stores"]
    assert stores["postgres"]["subjects"] == ["*"]
    assert stores["redis"]["subjects"] == list(RedisStore.stream_subjects)


async def test_a_turn_account_delivered_again_beyond_the_history_scan_is_not_added_twice(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    # a recorder killed before its ack: the new one gets the batch again, and the history may have
    # grown past what the duplicate check looks back over (history_scan entries) by then
    call = SimulatedCall(new_call_id(), turns=6)
    events = interleaved(call)
    first_account = next(e for e in events if isinstance(e.message, TurnMetrics))
    store = RedisStore(redis_url, public=None, history_scan=4)  # two turns back
    await store.connect()
    try:
        await store.write(events)
        await store.write([first_account])  # turn 1's account again, five turns later
    finally:
        await store.close()
    history = [json.loads(x) for x in await redis_client.lrange(f"call:{call.call_id}:history", 0, -1)]
    assert [h["turn_id"] for h in history] == [call.turn_id(n) for n in range(1, 7) for _ in range(2)]
    state = await redis_client.hgetall(f"call:{call.call_id}")
    assert state["turns"] == "6"
