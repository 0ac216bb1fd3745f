"""Recorder service tests: real NATS JetStream (a private server), PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgpack
import nats
import pytest
import redis.asyncio as aioredis
from nats.aio.msg import Msg
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.recorder.conftest import TcpGate, new_call_id, settle, wait_until
from tests.stand_ins.telegram_server import TelegramStandIn
from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.bus.nats import NatsBus
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
from vp_recorder.metrics import PARKED
from vp_recorder.settings import RecorderSettings

StartRecorder = Callable[[RecorderSettings], Awaitable[RecorderService]]

T0 = 1_763_700_000_000  # a fixed wall clock (ms) so stored times can be compared exactly


def call_sequence(call_id: str) -> list[tuple[str, Message]]:
    """A two-turn call with a prompt switch and a barge-in on the second bot turn."""
    t1, t2 = f"{call_id}-t1", f"{call_id}-t2"
    c = {"call_id": call_id}
    lc, tr, asr, llm, ctl = (
        subjects.lifecycle(call_id),
        subjects.turn_report(call_id),
        subjects.asr(call_id),
        subjects.llm_done(call_id),
        subjects.control(call_id),
    )
    return [
        (lc, CallStarted(**c, robot="demo", channel="web", sample_rate=16000, caller="+7999", ts_ms=T0)),
        (asr, AsrFinal(**c, turn_id=t1, text="здравствуйте", ts_ms=T0 + 1700)),
        (llm, LlmDone(**c, turn_id=t1, text="Добрый день! Чем помочь?", sentences=2, ts_ms=T0 + 2000)),
        (tr, PlaybackStarted(**c, turn_id=t1, ts_ms=T0 + 2100)),
        (
            tr,
            TurnMetrics(
                **c, turn_id=t1, user_text="здравствуйте", bot_text="Добрый день! Чем помочь?",
                speech_end_ts_ms=T0 + 1000, asr_final_ts_ms=T0 + 1700, first_sentence_ts_ms=T0 + 1900,
                first_audio_ts_ms=T0 + 2000, first_played_ts_ms=T0 + 2100, ts_ms=T0 + 4000,
            ),
        ),
        (lc, PromptSwitched(**c, turn_id=t2, from_prompt="main", to_prompt="sales", ts_ms=T0 + 5500)),
        (asr, AsrFinal(**c, turn_id=t2, text="хочу купить", ts_ms=T0 + 5600)),
        (llm, LlmDone(**c, turn_id=t2, text="Отлично, у нас есть три тарифа.", sentences=1, ts_ms=T0 + 6000)),
        (ctl, ControlInterrupt(**c, turn_id=t2, by_turn_id=f"{call_id}-t3", played_ms=400,
                               played_text="Отлично,", ts_ms=T0 + 6500)),
        (
            tr,
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
    # one connection: the server stores them in this order, whatever their subjects
    for subject, msg in events:
        await bus.publish(subject, msg)


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


@pytest.fixture
async def nats_events(gateway_bus: NatsBus) -> AsyncIterator[list[dict[str, object]]]:
    """Every public event published on NATS ``call_events.>`` while the test runs."""
    received: list[dict[str, object]] = []

    async def collect(msg: Msg) -> None:
        received.append({"subject": msg.subject, **json.loads(msg.data)})

    sub = await gateway_bus.client.subscribe(subjects.ALL_CALL_EVENTS, cb=collect)
    await gateway_bus.client.flush()
    yield received
    await sub.unsubscribe()


async def test_full_call_is_recorded_in_postgres_and_redis(
    gateway_bus: NatsBus,
    js_nats_url: str,
    recorder: RecorderService,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    public_events: list[dict[str, object]],
    nats_events: list[dict[str, object]],
) -> None:
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    await settle(recorder, js_nats_url, len(events))

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
    assert (call["turns"], call["barge_ins"], call["errors"], call["last_prompt"]) == (2, 1, 1, "sales")
    assert (call["voice_to_voice_p50_ms"], call["voice_to_voice_max_ms"]) == (1100, 1100)
    assert (call["end_reason"], call["sample_rate"]) == ("hangup", 16000)

    turns = await pg.fetch("SELECT * FROM call_turns WHERE call_id = $1 ORDER BY speech_end_at", call_id)
    assert [t["turn_id"] for t in turns] == [f"{call_id}-t1", f"{call_id}-t2"]
    first, second = turns
    assert (first["asr_ms"], first["llm_first_sentence_ms"], first["tts_first_audio_ms"]) == (700, 900, 1000)
    assert (first["asr_latency_ms"], first["llm_latency_ms"], first["tts_latency_ms"]) == (700, 200, 100)
    assert first["voice_to_voice_ms"] == 1100
    assert first["interrupted"] is False and first["user_text"] == "здравствуйте"
    assert second["interrupted"] is True and second["played_text"] == "Отлично,"
    assert second["voice_to_voice_ms"] == 1100 and second["asr_ms"] == 600
    assert second["speech_end_at"] == datetime.fromtimestamp((T0 + 5000) / 1000, tz=UTC)

    # every event, once, in stream order: the pipeline log without MongoDB
    logged = await pg.fetch("SELECT seq, type FROM call_events WHERE call_id = $1 ORDER BY seq", call_id)
    assert [r["type"] for r in logged] == [msg.type_name for _, msg in events]

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

    expected_types = [
        "call.started", "turn.completed", "prompt.switched", "barge_in", "turn.completed", "call.ended",
    ]  # fmt: skip
    await wait_until(lambda: len([e for e in public_events if e["call_id"] == call_id]) >= 6)
    await wait_until(lambda: len([e for e in nats_events if e["call_id"] == call_id]) >= 6)
    mine = [e for e in public_events if e["call_id"] == call_id]
    on_nats = [e for e in nats_events if e["call_id"] == call_id]
    assert [e["type"] for e in mine] == expected_types
    # the same events, byte for byte the same JSON, on both transports
    assert [{k: v for k, v in e.items() if k != "subject"} for e in on_nats] == mine
    assert [e["subject"] for e in on_nats] == [f"call_events.{t}" for t in expected_types]
    assert all(e["v"] == 1 and isinstance(e["ts_ms"], int) for e in mine)
    ids = [str(e["id"]) for e in mine]
    assert len(set(ids)) == 6 and all(i.startswith(f"{call_id}:") for i in ids)
    assert mine[0]["data"] == {
        "robot": "demo",
        "channel": "web",
        "caller": "+7999",
        "mode": "pipeline",
        "sample_rate": 16000,
    }
    assert mine[1]["data"]["latency"] == {  # type: ignore[index]
        "asr_ms": 700, "llm_first_sentence_ms": 900, "tts_first_audio_ms": 1000, "voice_to_voice_ms": 1100,
        "asr_latency_ms": 700, "llm_latency_ms": 200, "tts_latency_ms": 100,
    }  # fmt: skip
    assert mine[3]["data"] == {
        "turn_id": f"{call_id}-t2",
        "by_turn_id": f"{call_id}-t3",
        "played_ms": 400,
        "played_text": "Отлично,",
    }
    ended = mine[5]["data"]
    assert isinstance(ended, dict)
    assert (ended["reason"], ended["duration_ms"], ended["turns"]) == ("hangup", 12_500, 2)
    summary = ended["summary"]
    assert (summary["turns"], summary["barge_ins"], summary["errors"]) == (2, 1, 1)
    assert summary["voice_to_voice_ms"]["p50"] == 1100 and summary["last_prompt"] == "sales"
    assert recorder.health()["stores"]["postgres"]["state"] == "up"


async def test_duplicate_turn_metrics_counts_once(
    gateway_bus: NatsBus,
    js_nats_url: str,
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
    await play(gateway_bus, [(lc, started), (lc, metrics_msg), (lc, metrics_msg), (lc, metrics_msg)])
    await settle(recorder, js_nats_url, 4)

    assert await pg.fetchval("SELECT turns FROM calls WHERE call_id = $1", call_id) == 1
    assert await pg.fetchval("SELECT count(*) FROM call_turns WHERE call_id = $1", call_id) == 1
    row = await pg.fetchrow("SELECT * FROM call_turns WHERE call_id = $1", call_id)
    # stages that did not happen are NULL, not 0 or negative
    assert row["asr_ms"] == 300 and row["llm_first_sentence_ms"] is None and row["voice_to_voice_ms"] is None
    assert await redis_client.hget(f"call:{call_id}", "turns") == "1"
    assert await redis_client.llen(f"call:{call_id}:history") == 2
    # three publishes are three events (three ids), even with equal content
    await wait_until(lambda: len([e for e in public_events if e["call_id"] == call_id]) == 4)


async def test_malformed_events_are_parked_counted_and_the_consumer_keeps_going(
    gateway_bus: NatsBus,
    js_nats_url: str,
    recorder: RecorderService,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)

    def parked(reason: str) -> float:
        return sum(PARKED.labels(c.name, reason)._value.get() for c in recorder.consumers)

    reasons = ("not_msgpack", "unknown_type", "invalid", "unsupported_version")
    before = {r: parked(r) for r in reasons}
    await gateway_bus.publish_bytes(lc, b"\xc1\xff garbage \x00")
    await gateway_bus.publish_bytes(lc, msgpack.packb({"type": "no.such.type", "v": 1, "call_id": call_id}))
    await gateway_bus.publish_bytes(lc, msgpack.packb({"type": "call.ended", "v": 1, "call_id": call_id}))
    await gateway_bus.publish_bytes(
        lc,
        msgpack.packb(
            {"type": "call.started", "v": 99, "call_id": call_id, "robot": "x", "channel": "web",
             "sample_rate": 16000}
        ),
    )  # fmt: skip
    await gateway_bus.publish_bytes(
        lc, msgpack.packb({"type": "call.started", "v": 1, "call_id": call_id, "robot": 5})
    )  # wrong type
    await gateway_bus.publish(lc, ControlHangup(call_id=call_id))  # valid, not a public event
    await gateway_bus.publish(
        lc, CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0)
    )
    await settle(recorder, js_nats_url, 7)

    stores = len(recorder.consumers)
    assert {r: parked(r) - before[r] for r in reasons} == {
        "not_msgpack": stores, "unknown_type": stores, "invalid": 2 * stores, "unsupported_version": stores,
    }  # fmt: skip
    assert await pg.fetchval("SELECT status FROM calls WHERE call_id = $1", call_id) == "active"
    assert await pg.fetchval("SELECT count(*) FROM call_events WHERE call_id = $1", call_id) == 2
    assert await redis_client.hget(f"call:{call_id}", "robot") == "demo"

    # each bad message is parked once (every consumer parks it; the stream keeps one copy)
    nc = await nats.connect(js_nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(recorder.settings.parked_stream_name)
        assert info.state.messages == 5
        first = await js.get_msg(recorder.settings.parked_stream_name, seq=info.state.first_seq)
        assert first.headers is not None and first.headers["Vp-Reason"] == "not_msgpack"
        assert first.headers["Vp-Subject"] == lc and first.data == b"\xc1\xff garbage \x00"
    finally:
        await nc.close()


async def test_an_event_a_store_rejects_is_parked_and_the_rest_written(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService, pg: asyncpg.Connection
) -> None:
    call_id = new_call_id()
    lc, asr = subjects.lifecycle(call_id), subjects.asr(call_id)
    await play(
        gateway_bus,
        [
            (lc, CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0)),
            # PostgreSQL text cannot hold NUL: the database refuses this event, not the link
            (asr, AsrFinal(call_id=call_id, turn_id="t1", text="bad\x00text", ts_ms=T0 + 10)),
            (lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=100, ts_ms=T0 + 100)),
        ],
    )
    await settle(recorder, js_nats_url, 3)
    assert await pg.fetchval("SELECT status FROM calls WHERE call_id = $1", call_id) == "ended"
    types = await pg.fetch("SELECT type FROM call_events WHERE call_id = $1 ORDER BY seq", call_id)
    assert [r["type"] for r in types] == ["call.started", "call.ended"]
    assert recorder.store_consumer("postgres").parked == 1
    assert recorder.store_consumer("redis").parked == 0  # Redis stores it fine


async def test_out_of_order_events_still_make_a_whole_call(
    gateway_bus: NatsBus,
    js_nats_url: str,
    recorder: RecorderService,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    # two recorders share each consumer, so one may write call.ended before another wrote call.started
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)
    await play(
        gateway_bus,
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
    await settle(recorder, js_nats_url, 3)
    call = await pg.fetchrow("SELECT * FROM calls WHERE call_id = $1", call_id)
    assert (call["status"], call["robot"], call["channel"], call["turns"]) == ("ended", "late", "phone", 1)
    assert call["duration_sec"] == pytest.approx(3.0)
    assert call["started_at"] == datetime.fromtimestamp(T0 / 1000, tz=UTC)
    assert await redis_client.hget(f"call:{call_id}", "status") == "ended"


async def test_interrupt_before_llm_done_truncates_the_bot_entry(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService, redis_client: aioredis.Redis
) -> None:
    call_id = new_call_id()
    await play(
        gateway_bus,
        [
            (
                subjects.control(call_id),
                ControlInterrupt(call_id=call_id, turn_id="t1", by_turn_id="t2", played_text="Сейчас"),
            ),
            (
                subjects.llm_done(call_id),
                LlmDone(call_id=call_id, turn_id="t1", text="Сейчас всё расскажу", sentences=1),
            ),
        ],
    )
    await settle(recorder, js_nats_url, 2)
    history = [json.loads(x) for x in await redis_client.lrange(f"call:{call_id}:history", 0, -1)]
    assert [(h["role"], h["text"], h["interrupted"]) for h in history] == [("assistant", "Сейчас", True)]


async def test_a_fallback_turn_is_no_interruption_in_the_history(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService, redis_client: aioredis.Redis
) -> None:
    """A reply whose stage missed its deadline: the gateway stopped it upstream (the llm says
    interrupted) and said the fallback line; its turn.metrics is the final account."""
    call_id = new_call_id()
    c = {"call_id": call_id, "turn_id": "t1"}
    line = "Простите, заминка. Повторите, пожалуйста."
    await play(
        gateway_bus,
        [
            (subjects.asr(call_id), AsrFinal(**c, text="у меня собака")),
            (
                subjects.lifecycle(call_id),
                StageError(**c, stage="llm", kind="deadline", detail="no first llm.sentence after 6001 ms"),
            ),
            (subjects.control(call_id), ControlInterrupt(**c, reason="deadline")),
            (subjects.llm_done(call_id), LlmDone(**c, text="", sentences=0, interrupted=True)),
            (
                subjects.lifecycle(call_id),
                TurnMetrics(
                    **c, user_text="у меня собака", bot_text=line, played_text=line, outcome="fallback"
                ),
            ),
        ],
    )
    await settle(recorder, js_nats_url, 5)
    history = [json.loads(x) for x in await redis_client.lrange(f"call:{call_id}:history", 0, -1)]
    assert [(h["role"], h["text"], h["interrupted"]) for h in history] == [
        ("user", "у меня собака", False),
        ("assistant", line, False),
    ]


async def test_replaying_the_whole_stream_changes_nothing(
    gateway_bus: NatsBus,
    js_nats_url: str,
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    """Idempotence: a second set of consumers re-delivers every event; the stores stay as they were."""
    first = await start_recorder(settings)
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    await settle(first, js_nats_url, len(events))

    async def snapshot() -> tuple[object, ...]:
        call = await pg.fetchrow(
            "SELECT status, turns, barge_ins, errors, last_prompt, duration_sec FROM calls"
            " WHERE call_id = $1",
            call_id,
        )
        turns = await pg.fetch("SELECT * FROM call_turns WHERE call_id = $1 ORDER BY turn_id", call_id)
        logged = await pg.fetchval("SELECT count(*) FROM call_events WHERE call_id = $1", call_id)
        state = await redis_client.hgetall(f"call:{call_id}")
        history = await redis_client.lrange(f"call:{call_id}:history", 0, -1)
        return (dict(call), [dict(t) for t in turns], logged, state, history)

    before = await snapshot()
    await first.drain(5)
    replay = await start_recorder(settings.model_copy(update={"durable_prefix": "replay"}))
    await settle(replay, js_nats_url, len(events))
    assert replay.store_consumer("postgres").written == len(events)  # really delivered again
    assert await snapshot() == before


async def test_store_down_at_start_recovers(
    gateway_bus: NatsBus,
    js_nats_url: str,
    postgres_dsn: str,
    redis_url: str,
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    make_gate: Callable[[str], Awaitable[TcpGate]],
) -> None:
    pg_gate = await make_gate(postgres_dsn)
    gated = settings.model_copy(update={"postgres_dsn": SecretStr(pg_gate.url_via_gate(postgres_dsn))})
    with capture_logs() as logs:
        service = await start_recorder(gated)
        # the recorder is up and serving although Postgres cannot be reached
        assert service.ready()
        await wait_until(
            lambda: service.stores_up() == {"postgres": False, "redis": True, "nats_events": True}
        )
        assert service.health()["stores"]["postgres"]["state"] == "down"
        assert service.health()["stores"]["mongo"] == {"state": "disabled"}

        call_id = new_call_id()
        lc = subjects.lifecycle(call_id)
        await play(
            gateway_bus,
            [
                (lc, CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0)),
                (lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=1000, ts_ms=T0 + 1000)),
            ],
        )
        # Redis gets the call while Postgres is down; the events wait in the stream for Postgres
        await wait_until(lambda: service.store_consumer("redis").written == 2)
        assert await redis_client.hget(f"call:{call_id}", "status") == "ended"
        assert not await service.store_consumer("postgres").caught_up()

        await pg_gate.open()  # Postgres comes back: the consumer reconnects and catches up
        await settle(service, js_nats_url, 2)
        assert await pg.fetchval("SELECT status FROM calls WHERE call_id = $1", call_id) == "ended"
    names = [entry["event"] for entry in logs]
    assert "recorder.mongo_disabled" in names
    downs = [e for e in logs if e["event"] == "recorder.store_down" and e["store"] == "postgres"]
    assert len(downs) == 1  # once per outage, not once per retry
    assert "recorder.store_up" in names


async def test_redis_down_does_not_hold_postgres_back(
    gateway_bus: NatsBus,
    js_nats_url: str,
    redis_url: str,
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    pg: asyncpg.Connection,
    make_gate: Callable[[str], Awaitable[TcpGate]],
) -> None:
    redis_gate = await make_gate(redis_url)  # never opened: Redis stays unreachable
    service = await start_recorder(
        settings.model_copy(update={"redis_url": SecretStr(redis_gate.url_via_gate(redis_url))})
    )
    await wait_until(lambda: service.stores_up()["postgres"] and not service.stores_up()["redis"])
    call_id = new_call_id()
    await gateway_bus.publish(
        subjects.lifecycle(call_id),
        CallStarted(call_id=call_id, robot="demo", channel="web", sample_rate=16000, ts_ms=T0),
    )
    await wait_until(lambda: service.store_consumer("postgres").written == 1)
    assert await pg.fetchval("SELECT robot FROM calls WHERE call_id = $1", call_id) == "demo"
    assert service.store_consumer("redis").written == 0
    await service.drain(0.5)
    assert service.store_consumer("redis").state == "stopped"


async def test_call_end_writes_the_json_log_and_sends_the_telegram_report(
    gateway_bus: NatsBus,
    js_nats_url: str,
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    tmp_path: Path,
) -> None:
    """The reports store reads the whole call back from the stream (not from recorder memory)."""
    token, chat = "7301234567:AAHstand-in_token_value", "-100777"
    async with TelegramStandIn(token=token, chats=[chat]) as tg:
        configured = settings.model_copy(
            update={
                "call_logs": True,
                "call_logs_dir": tmp_path,
                "tg_token": SecretStr(token),
                "tg_chat_id": chat,
                "tg_api_url": tg.api_url,
            }
        )
        service = await start_recorder(configured)
        call_id = new_call_id()
        events = call_sequence(call_id)
        await play(gateway_bus, events)
        await settle(service, js_nats_url, len(events))
        await wait_until(lambda: len(tg.calls("sendDocument")) == 1)

    logs = list((tmp_path / "demo" / "logs").glob("*.json"))
    assert [p.name for p in logs] == [
        f"{datetime.fromtimestamp(T0 / 1000, UTC):%Y%m%d_%H%M%S}_web_{call_id}.json"
    ]
    doc = json.loads(logs[0].read_text(encoding="utf-8"))
    assert (doc["call_id"], doc["status"], doc["robot"]) == (call_id, "ended", "demo")
    assert [(s["role"], s["turn_id"]) for s in doc["segments"]] == [
        ("user", f"{call_id}-t1"), ("assistant", f"{call_id}-t1"),
        ("user", f"{call_id}-t2"), ("assistant", f"{call_id}-t2"),
    ]  # fmt: skip
    assert doc["segments"][3]["played_text"] == "Отлично," and doc["segments"][3]["interrupted"] is True
    assert doc["segments"][1]["voice_to_voice_ms"] == 1100
    assert len(doc["pipeline_log"]) == len(events)
    sent = tg.calls("sendDocument")[0]
    assert sent.fields["chat_id"] == chat and sent.files["document"].content == logs[0].read_bytes()
    assert len(tg.calls("sendMessage")) == 1


async def test_a_late_stage_event_neither_reorders_nor_overwrites_the_history(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService, redis_client: aioredis.Redis
) -> None:
    """What a restarted recorder sees: events of an earlier turn delivered again after later ones."""
    call_id = new_call_id()
    c = {"call_id": call_id}
    asr, llm, lc = subjects.asr(call_id), subjects.llm_done(call_id), subjects.lifecycle(call_id)
    metrics_t1 = TurnMetrics(
        **c, turn_id="t1", user_text="привет", bot_text="Здравствуйте, чем", interrupted=True,
        played_text="Здравствуйте,", speech_end_ts_ms=T0 + 100, ts_ms=T0 + 900,
    )  # fmt: skip
    await play(
        gateway_bus,
        [
            (lc, metrics_t1),
            (asr, AsrFinal(**c, turn_id="t2", text="сколько стоит", ts_ms=T0 + 2000)),
            (llm, LlmDone(**c, turn_id="t2", text="Сто рублей.", sentences=1, ts_ms=T0 + 2500)),
            # late: the stages' own reports of t1, after the gateway's final account of it
            (asr, AsrFinal(**c, turn_id="t1", text="привет", ts_ms=T0 + 500)),
            (
                llm,
                LlmDone(
                    **c, turn_id="t1", text="Здравствуйте, чем могу помочь?", sentences=2, ts_ms=T0 + 800
                ),
            ),
            # late and never seen before: a turn whose account never came goes where it belongs
            (asr, AsrFinal(**c, turn_id="t0", text="алло", ts_ms=T0 + 50)),
        ],
    )
    await settle(recorder, js_nats_url, 6)
    history = [json.loads(x) for x in await redis_client.lrange(f"call:{call_id}:history", 0, -1)]
    assert [(h["role"], h["turn_id"], h["text"]) for h in history] == [
        ("user", "t0", "алло"),
        ("user", "t1", "привет"),
        ("assistant", "t1", "Здравствуйте,"),  # what the caller heard, not the late full reply
        ("user", "t2", "сколько стоит"),
        ("assistant", "t2", "Сто рублей."),
    ]


async def test_a_continued_turn_is_no_turn_of_its_own_and_no_barge_in(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService, pg: asyncpg.Connection
) -> None:
    call_id = new_call_id()
    lc = subjects.lifecycle(call_id)
    await play(
        gateway_bus,
        [
            (lc, CallStarted(call_id=call_id, robot="bot", channel="web", sample_rate=16000, ts_ms=T0)),
            (subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id="t1", text="скажите", ts_ms=T0 + 10)),
            (
                subjects.control(call_id),
                ControlInterrupt(
                    call_id=call_id, turn_id="t1", by_turn_id="t2", reason="continued", ts_ms=T0 + 20
                ),
            ),
            (
                subjects.asr(call_id),
                AsrFinal(
                    call_id=call_id, turn_id="t2", text="скажите сколько стоит", merged=["t1"], ts_ms=T0 + 30
                ),
            ),
            (
                lc,
                TurnMetrics(call_id=call_id, turn_id="t2", user_text="скажите сколько стоит", ts_ms=T0 + 40),
            ),
            # a stage's late word about the merged turn does not bring it back
            (
                subjects.llm_done(call_id),
                LlmDone(call_id=call_id, turn_id="t1", text="", sentences=0, ts_ms=T0 + 50),
            ),
        ],
    )
    await settle(recorder, js_nats_url, 6)
    rows = await pg.fetch("SELECT turn_id FROM call_turns WHERE call_id = $1", call_id)
    assert [r["turn_id"] for r in rows] == ["t2"]
    call = await pg.fetchrow("SELECT turns, barge_ins FROM calls WHERE call_id = $1", call_id)
    assert (call["turns"], call["barge_ins"]) == (1, 0)
