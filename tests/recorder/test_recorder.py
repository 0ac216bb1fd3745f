"""Recorder service tests on the in-memory bus against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import msgpack
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from tests.recorder.conftest import TcpGate, make_settings, new_call_id, settle, wait_until
from voiceplatform import metrics, subjects
from voiceplatform.bus import Bus
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlHangup,
    ControlInterrupt,
    LlmDone,
    Message,
    PlaybackStarted,
    PromptSwitched,
    StageError,
    TurnMetrics,
)
from vp_recorder.app import RecorderService

T0 = 1_763_700_000_000  # a fixed wall clock (ms) so stored times can be compared exactly


def call_sequence(call_id: str) -> list[tuple[str, Message]]:
    """A two-turn call with a prompt switch and a barge-in on the second bot turn."""
    t1, t2 = f"{call_id}-t1", f"{call_id}-t2"
    c = {"call_id": call_id}
    lc, asr, llm, ctl = (
        subjects.lifecycle(call_id),
        subjects.asr(call_id),
        subjects.llm_done(call_id),
        subjects.control(call_id),
    )
    return [
        (lc, CallStarted(**c, robot="demo", channel="web", sample_rate=16000, caller="+7999", ts_ms=T0)),
        (asr, AsrFinal(**c, turn_id=t1, text="здравствуйте", ts_ms=T0 + 1700)),
        (llm, LlmDone(**c, turn_id=t1, text="Добрый день! Чем помочь?", sentences=2, ts_ms=T0 + 2000)),
        (lc, PlaybackStarted(**c, turn_id=t1, ts_ms=T0 + 2100)),
        (
            lc,
            TurnMetrics(
                **c, turn_id=t1, user_text="здравствуйте", bot_text="Добрый день! Чем помочь?",
                speech_end_ts_ms=T0 + 1000, asr_final_ts_ms=T0 + 1700, first_sentence_ts_ms=T0 + 1900,
                first_audio_ts_ms=T0 + 2000, first_played_ts_ms=T0 + 2100, ts_ms=T0 + 4000,
            ),
        ),
        (lc, PromptSwitched(**c, turn_id=t2, from_prompt="main", to_prompt="sales", ts_ms=T0 + 5500)),
        (asr, AsrFinal(**c, turn_id=t2, text="хочу купить", ts_ms=T0 + 5600)),
        (llm, LlmDone(**c, turn_id=t2, text="Отлично, у нас есть три тарифа.", sentences=1, ts_ms=T0 + 6000)),
        (ctl, ControlInterrupt(**c, turn_id=t2, played_ms=400, played_text="Отлично,", ts_ms=T0 + 6500)),
        (
            lc,
            TurnMetrics(
                **c, turn_id=t2, user_text="хочу купить", bot_text="Отлично, у нас есть три тарифа.",
                speech_end_ts_ms=T0 + 5000, asr_final_ts_ms=T0 + 5600, first_sentence_ts_ms=T0 + 5800,
                first_audio_ts_ms=T0 + 5900, first_played_ts_ms=T0 + 6100, interrupted=True,
                played_text="Отлично,", ts_ms=T0 + 6600,
            ),
        ),
        (lc, StageError(**c, stage="tts", kind="timeout", detail="slow", ts_ms=T0 + 7000)),
        (lc, CallEnded(**c, reason="hangup", duration_ms=12_500, turns=2, ts_ms=T0 + 12_500)),
    ]  # fmt: skip


async def play(bus: Bus, events: list[tuple[str, Message]]) -> None:
    for subject, msg in events:
        await bus.publish(subject, msg)
        # let each subscription take it, so events on different subjects keep the call's order
        await asyncio.sleep(0)


@pytest.fixture
async def public_events(redis_client: aioredis.Redis) -> AsyncIterator[list[dict[str, object]]]:
    """Every public event published on the Redis channel while the test runs."""
    received: list[dict[str, object]] = []
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("call_events")

    async def listen() -> None:
        async for item in pubsub.listen():
            if item["type"] == "message":
                received.append(json.loads(item["data"]))

    task = asyncio.create_task(listen())
    yield received
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pubsub.aclose()


async def test_full_call_is_recorded_in_postgres_and_redis(
    broker: MemoryBroker,
    recorder: RecorderService,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    public_events: list[dict[str, object]],
) -> None:
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(broker.bus("gateway"), events)
    await settle(recorder, len(events))

    call = await pg.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
    assert call is not None
    assert (call["status"], call["robot"], call["channel"], call["caller"]) == (
        "ended",
        "demo",
        "web",
        "+7999",
    )
    assert call["started_at"] == datetime.fromtimestamp(T0 / 1000, tz=UTC)
    assert call["ended_at"] == datetime.fromtimestamp((T0 + 12_500) / 1000, tz=UTC)
    assert call["duration_sec"] == pytest.approx(12.5)
    assert call["turns"] == 2
    assert call["end_reason"] == "hangup"

    turns = await pg.fetch("SELECT * FROM call_turns WHERE call_id = $1 ORDER BY speech_end_at", call_id)
    assert [t["turn_id"] for t in turns] == [f"{call_id}-t1", f"{call_id}-t2"]
    first, second = turns
    assert (first["asr_ms"], first["llm_first_sentence_ms"], first["tts_first_audio_ms"]) == (700, 900, 1000)
    assert first["voice_to_voice_ms"] == 1100
    assert first["interrupted"] is False and first["user_text"] == "здравствуйте"
    assert second["interrupted"] is True and second["played_text"] == "Отлично,"
    assert second["voice_to_voice_ms"] == 1100 and second["asr_ms"] == 600
    assert second["speech_end_at"] == datetime.fromtimestamp((T0 + 5000) / 1000, tz=UTC)

    state = await redis_client.hgetall(f"call:{call_id}")
    assert state["status"] == "ended"
    assert (state["robot"], state["channel"], state["started_at"]) == ("demo", "web", str(T0))
    assert state["turns"] == "2"
    assert state["prompt"] == "sales"
    assert state["last_user_text"] == "хочу купить"
    assert state["last_bot_text"] == "Отлично,"
    history = [json.loads(x) for x in await redis_client.lrange(f"call:{call_id}:history", 0, -1)]
    assert [(h["role"], h["turn_id"]) for h in history] == [
        ("user", f"{call_id}-t1"),
        ("assistant", f"{call_id}-t1"),
        ("user", f"{call_id}-t2"),
        ("assistant", f"{call_id}-t2"),
    ]
    assert history[1] == {
        "role": "assistant", "text": "Добрый день! Чем помочь?", "turn_id": f"{call_id}-t1",
        "ts_ms": T0 + 2000, "interrupted": False,
    }  # fmt: skip
    assert history[3]["text"] == "Отлично," and history[3]["interrupted"] is True
    for key in (f"call:{call_id}", f"call:{call_id}:history"):
        assert 1790 <= await redis_client.ttl(key) <= 1800

    await wait_until(lambda: len([e for e in public_events if e["call_id"] == call_id]) >= 6)
    mine = [e for e in public_events if e["call_id"] == call_id]
    assert [e["type"] for e in mine] == [
        "call.started", "turn.completed", "prompt.switched", "barge_in", "turn.completed", "call.ended",
    ]  # fmt: skip
    assert all(e["v"] == 1 and isinstance(e["ts_ms"], int) for e in mine)
    assert mine[0]["data"] == {
        "robot": "demo",
        "channel": "web",
        "caller": "+7999",
        "mode": "pipeline",
        "sample_rate": 16000,
    }
    assert mine[1]["data"]["latency"] == {  # type: ignore[index]
        "asr_ms": 700, "llm_first_sentence_ms": 900, "tts_first_audio_ms": 1000, "voice_to_voice_ms": 1100,
    }  # fmt: skip
    assert mine[3]["data"] == {
        "turn_id": f"{call_id}-t2",
        "by_turn_id": "",
        "played_ms": 400,
        "played_text": "Отлично,",
    }
    assert mine[5]["data"] == {"reason": "hangup", "duration_ms": 12_500, "turns": 2}
    assert recorder.health()["stores"]["postgres"]["state"] == "up"


async def test_duplicate_turn_metrics_counts_once(
    broker: MemoryBroker,
    recorder: RecorderService,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    public_events: list[dict[str, object]],
) -> None:
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)
    started = CallStarted(call_id=call_id, robot="demo", channel="phone", sample_rate=8000, ts_ms=T0)
    metrics_msg = TurnMetrics(
        call_id=call_id, turn_id="t1", user_text="да", bot_text="хорошо", speech_end_ts_ms=T0 + 100,
        asr_final_ts_ms=T0 + 400, ts_ms=T0 + 900,
    )  # fmt: skip
    bus = broker.bus("gateway")
    await play(bus, [(lc, started), (lc, metrics_msg), (lc, metrics_msg), (lc, metrics_msg)])
    await settle(recorder, 4)

    assert await pg.fetchval("SELECT turns FROM calls WHERE call_id = $1", call_id) == 1
    assert await pg.fetchval("SELECT count(*) FROM call_turns WHERE call_id = $1", call_id) == 1
    row = await pg.fetchrow("SELECT * FROM call_turns WHERE call_id = $1", call_id)
    # stages that did not happen are NULL, not 0 or negative
    assert row["asr_ms"] == 300 and row["llm_first_sentence_ms"] is None and row["voice_to_voice_ms"] is None
    assert await redis_client.hget(f"call:{call_id}", "turns") == "1"
    assert await redis_client.llen(f"call:{call_id}:history") == 2
    await wait_until(
        lambda: any(e["call_id"] == call_id and e["type"] == "turn.completed" for e in public_events)
    )
    await asyncio.sleep(0.05)
    assert [e["type"] for e in public_events if e["call_id"] == call_id] == ["call.started", "turn.completed"]


async def test_malformed_events_are_counted_and_consumer_keeps_going(
    broker: MemoryBroker, recorder: RecorderService, pg: asyncpg.Connection
) -> None:
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)
    dropped = metrics.MESSAGES_DROPPED

    def count(reason: str) -> float:
        return dropped.labels("recorder", "lifecycle", reason)._value.get()

    before = {r: count(r) for r in ("not_msgpack", "unknown_type", "invalid")}
    bus = broker.bus("gateway")
    await bus.publish_bytes(lc, b"\xc1\xff garbage \x00")
    await bus.publish_bytes(lc, msgpack.packb({"type": "no.such.type", "v": 1, "call_id": call_id}))
    await bus.publish_bytes(
        lc, msgpack.packb({"type": "call.ended", "v": 1, "call_id": call_id})
    )  # no reason
    await bus.publish(lc, ControlHangup(call_id=call_id))  # a real message the recorder does not record
    await bus.publish(
        lc, CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0)
    )
    await settle(recorder, 1)

    assert count("not_msgpack") == before["not_msgpack"] + 1
    assert count("unknown_type") == before["unknown_type"] + 1
    assert count("invalid") == before["invalid"] + 1
    assert recorder.events_ignored == 1
    assert await pg.fetchval("SELECT status FROM calls WHERE call_id = $1", call_id) == "active"


async def test_out_of_order_events_still_make_a_whole_call(
    broker: MemoryBroker, recorder: RecorderService, pg: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    # two recorders share the queue group, so one may see call.ended before another wrote call.started
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)
    bus = broker.bus("gateway")
    await play(
        bus,
        [
            (
                lc,
                TurnMetrics(
                    call_id=call_id, turn_id="t1", user_text="а", speech_end_ts_ms=T0 + 50, ts_ms=T0 + 90
                ),
            ),
            (lc, CallEnded(call_id=call_id, reason="timeout", duration_ms=3000, ts_ms=T0 + 3000)),
            (lc, CallStarted(call_id=call_id, robot="late", channel="phone", sample_rate=8000, ts_ms=T0)),
        ],
    )
    await settle(recorder, 3)
    call = await pg.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
    assert (call["status"], call["robot"], call["channel"], call["turns"]) == ("ended", "late", "phone", 1)
    assert call["duration_sec"] == pytest.approx(3.0)
    assert await redis_client.hget(f"call:{call_id}", "status") == "ended"


async def test_interrupt_before_llm_done_truncates_the_bot_entry(
    broker: MemoryBroker, recorder: RecorderService, redis_client: aioredis.Redis
) -> None:
    call_id = new_call_id()
    bus = broker.bus("gateway")
    await play(
        bus,
        [
            (
                subjects.control(call_id),
                ControlInterrupt(call_id=call_id, turn_id="t1", played_text="Сейчас"),
            ),
            (
                subjects.llm_done(call_id),
                LlmDone(call_id=call_id, turn_id="t1", text="Сейчас всё расскажу", sentences=1),
            ),
        ],
    )
    await settle(recorder, 2)
    history = [json.loads(x) for x in await redis_client.lrange(f"call:{call_id}:history", 0, -1)]
    assert [(h["role"], h["text"], h["interrupted"]) for h in history] == [("assistant", "Сейчас", True)]


async def test_store_down_at_start_recovers(
    broker: MemoryBroker,
    postgres_dsn: str,
    redis_url: str,
    pg_schema: str,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    make_gate: Callable[[str], Awaitable[TcpGate]],
) -> None:
    pg_gate = await make_gate(postgres_dsn)
    settings = make_settings(pg_gate.url_via_gate(postgres_dsn), redis_url, pg_schema)
    service = RecorderService(settings)
    with capture_logs() as logs:
        await service.start(broker.bus("recorder"))
        try:
            # the recorder is up and serving although Postgres cannot be reached
            assert service.ready()
            await wait_until(lambda: service.stores_up() == {"postgres": False, "redis": True})
            assert service.health()["stores"]["postgres"]["state"] == "down"
            assert service.health()["stores"]["mongo"] == {"state": "disabled"}

            call_id = new_call_id()
            lc = subjects.lifecycle(call_id)
            await play(
                broker.bus("gateway"),
                [
                    (
                        lc,
                        CallStarted(
                            call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0
                        ),
                    ),
                    (lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=1000, ts_ms=T0 + 1000)),
                ],
            )
            await wait_until(lambda: service.events_received == 2)
            assert await service.writer("redis").flush(5)
            # Redis got the call while Postgres was down; Postgres holds the events in its queue
            assert await redis_client.hget(f"call:{call_id}", "status") == "ended"
            assert service.writer("postgres").queue.qsize() == 2

            await pg_gate.open()  # Postgres comes back: the writer reconnects and catches up
            await wait_until(lambda: service.stores_up()["postgres"], within_s=10)
            assert await service.writer("postgres").flush(5)
            assert await pg.fetchval("SELECT status FROM calls WHERE call_id = $1", call_id) == "ended"
        finally:
            await service.drain(5)
    names = [entry["event"] for entry in logs]
    assert "recorder.mongo_disabled" in names
    assert names.count("recorder.store_down") == 1  # once per outage, not once per retry
    assert "recorder.store_up" in names


async def test_redis_down_does_not_hold_postgres_back(
    broker: MemoryBroker,
    postgres_dsn: str,
    redis_url: str,
    pg_schema: str,
    pg: asyncpg.Connection,
    make_gate: Callable[[str], Awaitable[TcpGate]],
) -> None:
    redis_gate = await make_gate(redis_url)  # never opened: Redis stays unreachable
    service = RecorderService(make_settings(postgres_dsn, redis_gate.url_via_gate(redis_url), pg_schema))
    await service.start(broker.bus("recorder"))
    try:
        await wait_until(lambda: service.stores_up() == {"postgres": True, "redis": False})
        call_id = new_call_id()
        lc = subjects.lifecycle(call_id)
        await broker.bus("gateway").publish(
            lc, CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0)
        )
        await wait_until(lambda: service.events_received == 1)
        assert await service.writer("postgres").flush(5)
        assert await pg.fetchval("SELECT robot FROM calls WHERE call_id = $1", call_id) == "demo"
        assert service.writer("redis").queue.qsize() == 1
    finally:
        await service.drain(0.2)
    assert service.writer("redis").state == "stopped"


async def test_full_queue_drops_and_counts(
    broker: MemoryBroker,
    postgres_dsn: str,
    redis_url: str,
    pg_schema: str,
    make_gate: Callable[[str], Awaitable[TcpGate]],
) -> None:
    pg_gate, redis_gate = await make_gate(postgres_dsn), await make_gate(redis_url)
    settings = make_settings(
        pg_gate.url_via_gate(postgres_dsn), redis_gate.url_via_gate(redis_url), pg_schema
    )
    service = RecorderService(settings.model_copy(update={"store_queue_max": 2}))
    await service.start(broker.bus("recorder"))
    try:
        bus = broker.bus("gateway")
        for _ in range(4):
            call_id = new_call_id()
            await bus.publish(
                subjects.lifecycle(call_id),
                CallStarted(call_id=call_id, robot="r", channel="web", sample_rate=16000),
            )
        await wait_until(lambda: service.events_received == 4)
        for writer in service.writers:
            assert (writer.queue.qsize(), writer.dropped) == (2, 2)
    finally:
        await service.drain(0.1)
