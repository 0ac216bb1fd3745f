"""Provider usage in the record: the PostgreSQL view ``call_usage``, the transcript's
``metadata.usage`` (MongoDB, call logs, ``GET /calls/{id}``) and the public ``call.ended`` summary.

A call whose chains failed over (a stalled Yandex STT, a Gemini attempt that failed, an ElevenLabs
sentence that failed and one cut off by barge-in) must show every attempt, each once however often
its event is delivered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import nats
import yaml
from nats.aio.msg import Msg

from tests.recorder.conftest import OPERATOR_TOKEN, new_call_id, settle
from tests.recorder.test_call_events_contract import ASYNCAPI, SCHEMA_OF_TYPE, broken, validator
from tests.recorder.test_mongo import ListReader
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import AsrFinal, CallEnded, CallStarted, LlmSentence, Message, ProviderUsage
from vp_recorder.app import RecorderService
from vp_recorder.events import encode_public, public_event
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.mongo import MongoStore
from vp_recorder.stores.postgres import PostgresStore
from vp_recorder.summary import call_summary
from vp_recorder.transcript import build_transcript
from vp_recorder.usage import usage_rows

T0 = 1_763_700_000_000


def usage(call_id: str, turn_id: str, stage: str, provider: str, **kw: Any) -> ProviderUsage:
    return ProviderUsage(call_id=call_id, turn_id=turn_id, stage=stage, provider=provider, ts_ms=T0 + 1, **kw)


def a_call(call_id: str) -> list[tuple[str, Message]]:
    lc, us = subjects.lifecycle(call_id), subjects.usage(call_id)
    t1, t2 = f"{call_id}-t1", f"{call_id}-t2"
    return [
        (lc, CallStarted(call_id=call_id, robot="demo", channel="phone", sample_rate=8000, ts_ms=T0)),
        (us, usage(call_id, t1, "asr", "yandex", audio_ms=1540, outcome="timeout")),
        (us, usage(call_id, t1, "asr", "whisper", audio_ms=1540)),
        (subjects.asr(call_id),
         AsrFinal(call_id=call_id, turn_id=t1, text="алло", audio_ms=1540, provider="whisper")),
        (us, usage(call_id, t1, "llm", "gemini", prompt_tokens=40, outcome="failed")),
        (us, usage(call_id, t1, "llm", "gemini", model="gemini-2.5-flash", prompt_tokens=51,
                   completion_tokens=7)),
        (subjects.llm_sentence(call_id),
         LlmSentence(call_id=call_id, turn_id=t1, index=0, text="Добрый день.", robot="demo",
                     sample_rate=8000)),
        (us, usage(call_id, t1, "tts", "elevenlabs", characters=12)),
        (us, usage(call_id, t1, "tts", "elevenlabs", characters=20, outcome="failed")),
        (us, usage(call_id, t1, "tts", "festival", characters=20)),
        (us, usage(call_id, t2, "asr", "yandex", audio_ms=800)),
        (us, usage(call_id, t2, "tts", "elevenlabs", characters=9, outcome="cancelled")),
        (lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=9000, turns=2, ts_ms=T0 + 9000)),
    ]  # fmt: skip


EXPECTED_ROWS = [
    {"stage": "asr", "provider": "whisper", "model": "", "requests": 1, "failed": 0, "asr_seconds": 1.54,
     "prompt_tokens": 0, "completion_tokens": 0, "characters": 0},
    {"stage": "asr", "provider": "yandex", "model": "", "requests": 2, "failed": 1, "asr_seconds": 2.34,
     "prompt_tokens": 0, "completion_tokens": 0, "characters": 0},
    {"stage": "llm", "provider": "gemini", "model": "", "requests": 1, "failed": 1, "asr_seconds": 0.0,
     "prompt_tokens": 40, "completion_tokens": 0, "characters": 0},
    {"stage": "llm", "provider": "gemini", "model": "gemini-2.5-flash", "requests": 1, "failed": 0,
     "asr_seconds": 0.0, "prompt_tokens": 51, "completion_tokens": 7, "characters": 0},
    # the cancelled sentence is billed (characters) but is no failure
    {"stage": "tts", "provider": "elevenlabs", "model": "", "requests": 3, "failed": 1, "asr_seconds": 0.0,
     "prompt_tokens": 0, "completion_tokens": 0, "characters": 41},
    {"stage": "tts", "provider": "festival", "model": "", "requests": 1, "failed": 0, "asr_seconds": 0.0,
     "prompt_tokens": 0, "completion_tokens": 0, "characters": 20},
]  # fmt: skip


def stored(call_id: str, first_seq: int = 10) -> list[StoredEvent]:
    return [StoredEvent(seq, subject, msg) for seq, (subject, msg) in enumerate(a_call(call_id), first_seq)]


# ---- pure: rows, transcript, summary, public event --------------------------------------------------


def test_rows_per_stage_provider_and_model_count_every_attempt_once() -> None:
    events = stored("use-1")
    assert usage_rows(e.message for e in events) == EXPECTED_ROWS
    # a redelivery (same sequences, any order) changes neither the transcript nor the summary
    again = events + list(reversed(events))
    assert build_transcript(again)["metadata"]["usage"]["by_provider"] == EXPECTED_ROWS
    assert call_summary(again)["usage"] == EXPECTED_ROWS


def test_transcript_usage_keeps_its_keys_and_takes_tts_characters_from_the_providers() -> None:
    doc = build_transcript(stored("use-2"))
    assert doc["metadata"]["usage"] == {
        "asr_audio_seconds": 1.54,  # the final's audio, as before
        "llm_prompt_tokens": 0,
        "llm_completion_tokens": 0,
        "tts_characters": 12 + 20 + 20 + 9,  # every attempt sent, not the sentence estimate (12)
        "by_provider": EXPECTED_ROWS,
    }
    entry = next(e for e in doc["pipeline_log"] if e["type"] == "provider.usage")
    assert entry["turn_id"] == "use-2-t1"
    assert entry["detail"] == {
        "stage": "asr", "provider": "yandex", "model": "", "outcome": "timeout", "audio_ms": 1540,
        "prompt_tokens": 0, "completion_tokens": 0, "characters": 0,
    }  # fmt: skip


def test_the_public_call_ended_carries_usage_and_validates_against_the_contract() -> None:
    doc = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    events = stored("use-3")
    ended = events[-1]
    public = public_event(ended.message, ended.event_id, call_summary(events))
    assert public is not None
    payload = json.loads(encode_public(public))
    assert payload["data"]["summary"]["usage"] == EXPECTED_ROWS
    validator(doc, SCHEMA_OF_TYPE["call.ended"]).validate(payload)
    validator(doc, "CallEvent").validate(payload)
    for path, value in (
        (["data", "summary", "usage", 0, "requests"], ...),
        (["data", "summary", "usage", 0, "asr_seconds"], "1.54"),
        (["data", "summary", "usage"], {"asr": 1}),
    ):
        assert not validator(doc, "CallEvent").is_valid(broken(payload, path, value))  # type: ignore[arg-type]
    # a call without usage events still validates (an empty list)
    plain = public_event(ended.message, ended.event_id, call_summary([events[0], ended]))
    assert plain is not None and plain["data"]["summary"]["usage"] == []
    validator(doc, "CallEvent").validate(json.loads(encode_public(plain)))


def test_mongo_rebuilds_the_transcript_on_usage_reported_after_the_call_ended() -> None:
    store = MongoStore("mongodb://127.0.0.1:1", "x", ListReader())
    late = usage("use-6", "use-6-t2", "tts", "elevenlabs", characters=9, outcome="cancelled")
    assert store.accepts(late)


# ---- PostgreSQL: the call_usage view ----------------------------------------------------------------


async def view_rows(conn: asyncpg.Connection, call_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT * FROM call_usage WHERE call_id = $1 ORDER BY stage, provider, model", call_id
    )
    return [{k: v for k, v in row.items() if k != "call_id"} for row in rows]


async def test_the_view_is_exact_after_a_redelivered_batch(
    postgres_dsn: str, pg_schema: str, pg: asyncpg.Connection
) -> None:
    store = PostgresStore(postgres_dsn, schema=pg_schema)
    await store.connect()
    try:
        first, other = stored("use-4"), stored("use-5", first_seq=100)
        await store.write(first[:7])
        await store.write(first)  # redelivered: its first seven events again, then the rest
        await store.write(first[3:] + other)
        await store.write(other)
    finally:
        await store.close()
    assert await pg.fetchval("SELECT count(*) FROM call_events WHERE call_id = 'use-4'") == len(first)
    assert await view_rows(pg, "use-4") == EXPECTED_ROWS
    assert await view_rows(pg, "use-5") == EXPECTED_ROWS
    columns = await pg.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
        "AND table_name = 'call_usage' ORDER BY ordinal_position",
        pg_schema,
    )
    assert [c["column_name"] for c in columns] == [
        "call_id", "stage", "provider", "model", "requests", "failed", "asr_seconds",
        "prompt_tokens", "completion_tokens", "characters",
    ]  # fmt: skip


# ---- the running recorder: API and public event ------------------------------------------------------


async def test_recorded_call_exposes_usage_in_the_api_the_view_and_call_ended(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService, pg: asyncpg.Connection
) -> None:
    call_id = new_call_id()
    ended: list[dict[str, Any]] = []
    got_ended = asyncio.Event()

    async def on_ended(msg: Msg) -> None:
        payload = json.loads(msg.data)
        if payload["call_id"] == call_id:
            ended.append(payload)
            got_ended.set()

    nc = await nats.connect(js_nats_url)
    try:
        await nc.subscribe(subjects.call_event("call.ended"), cb=on_ended)
        await nc.flush()
        events = a_call(call_id)
        for subject, msg in events:
            await gateway_bus.publish(subject, msg)
        await settle(recorder, js_nats_url, len(events))
        await asyncio.wait_for(got_ended.wait(), 5.0)
    finally:
        await nc.close()

    assert len(ended) == 1 and ended[0]["data"]["summary"]["usage"] == EXPECTED_ROWS
    assert await view_rows(pg, call_id) == EXPECTED_ROWS
    app = recorder.asgi_app()
    assert app is not None
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://recorder", headers=headers) as client:
        response = await client.get(f"/calls/{call_id}")
    assert response.status_code == 200
    assert response.json()["metadata"]["usage"]["by_provider"] == EXPECTED_ROWS
