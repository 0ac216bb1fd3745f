"""A recorded Russian caller goes in through the web gateway; a reply (text and audio) comes out.

Every stage runs as its own process over real NATS; the recorder writes to real Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import numpy as np
import pytest
import redis.asyncio as aioredis

from tests.audio_fixtures import festival_available, utterance
from tests.e2e.conftest import http_get, turns_summary
from voiceplatform.audio import rms
from voiceplatform.cli.call import place_call

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]
RATE = 16000


def silence(s: float) -> np.ndarray:
    return np.zeros(int(RATE * s), np.int16)


async def stored(postgres_dsn, redis_url, call_id):
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for _ in range(50):
            row = await conn.fetchrow(
                "select status, turns, robot, channel from calls where call_id=$1", call_id
            )
            if row and row["status"] == "ended":
                break
            await asyncio.sleep(0.1)
        turns = await conn.fetch("select * from call_turns where call_id=$1 order by created_at", call_id)
    finally:
        await conn.close()
    r = aioredis.from_url(redis_url)
    try:
        session = await r.hgetall(f"call:{call_id}")
        history = await r.lrange(f"call:{call_id}:history", 0, -1)
        ttl = await r.ttl(f"call:{call_id}")
    finally:
        await r.aclose()
    return row, turns, session, history, ttl


async def test_health_and_metrics(platform):
    status, body = http_get(platform.health)
    assert status == 200, body
    assert json.loads(body)["missing_services"] == []
    status, body = http_get(platform.health.replace("/health", "/metrics"))
    assert status == 200 and b"vp_" in body


async def test_russian_question_gets_a_spoken_reply_and_a_record(platform, postgres_dsn, redis_url):
    caller = np.concatenate(
        [silence(3.5), utterance("Здравствуйте! У меня есть собака, что вы можете предложить?"), silence(1.0)]
    )
    result = await place_call(platform.url, "pipeline_russian", caller, tail_s=25)
    assert result.call_id, platform.logs_text()
    assert result.greeting_first_audio_s is not None  # how fast: bench_voice_to_voice reports it
    assert len(result.turns) == 1, (result.events, platform.logs_text())
    turn = result.turns[0]
    assert "собак" in turn["user_text"].lower()
    assert turn["bot_text"] and not turn["interrupted"]
    # how long it took is the benchmark's business (bench/bench_conversation.py); here: it was heard
    assert turn["voice_to_voice_ms"] is not None and turn["voice_to_voice_ms"] > 0
    assert (
        turn["asr_ms"]
        <= turn["llm_first_sentence_ms"]
        <= turn["tts_first_audio_ms"]
        <= turn["voice_to_voice_ms"]
    )
    robot_audio = np.frombuffer(bytes(result.robot_audio), dtype="<i2")
    assert robot_audio.size > RATE * 2 and rms(robot_audio) > 100  # greeting + reply, not silence

    row, turns, session, history, ttl = await stored(postgres_dsn, redis_url, result.call_id)
    assert row is not None and row["status"] == "ended" and row["robot"] == "pipeline_russian"
    assert row["channel"] == "web" and row["turns"] == 1
    assert "собак" in turns[0]["user_text"].lower() and turns[0]["bot_text"] == turn["bot_text"]
    assert session and 0 < ttl <= 1800
    assert any(b"user" in h for h in history) and any(b"assistant" in h for h in history)


async def test_barge_in_stops_playback_and_drops_stale_audio(platform, postgres_dsn, redis_url):
    # the caller asks, waits for the reply to start, then talks over the robot
    first = utterance("Здравствуйте! Расскажите, что вы продаёте?")
    over = utterance("Подождите, подождите, у меня вопрос про доставку.")
    caller = np.concatenate([silence(3.5), first, silence(0.5)])
    # over the reply once it has been heard for 1.5 s: a barge-in, not a continuation
    result = await place_call(
        platform.url,
        "pipeline_russian",
        caller,
        tail_s=25,
        over_reply=(np.concatenate([over, silence(1.0)]), 1.5),
    )
    interrupted = [t for t in result.turns if t.get("outcome") == "cut"]  # a barge-in, not a continuation
    assert interrupted, (turns_summary(result.turns), platform.logs_text())
    assert result.flushes, "the gateway never told the client to flush playback"
    flush_t = result.flushes[-1]
    events_after = [e for e in result.events if e["t_s"] > flush_t and e["type"] == "bot.sentence"]
    stale = [e for e in events_after if e["turn_id"] == interrupted[0]["turn_id"]]
    assert not stale, "sentences of the interrupted turn still reached the caller"
    _row, turns, *_ = await stored(postgres_dsn, redis_url, result.call_id)
    stored_interrupted = [t for t in turns if t["interrupted"]]
    assert stored_interrupted and stored_interrupted[0]["played_text"] != stored_interrupted[0]["bot_text"]


async def test_two_instances_of_each_worker_serve_concurrent_calls(platform):
    """Two calls at once: each stage's two instances share them, and both calls get their reply."""
    caller = np.concatenate([silence(3.5), utterance("Сколько стоит доставка?"), silence(1.0)])
    results = await asyncio.gather(
        *(place_call(platform.url, "pipeline_russian", caller, tail_s=25) for _ in range(2))
    )
    for result in results:
        assert len(result.turns) == 1, (result.events, platform.logs_text())
        assert "доставк" in result.turns[0]["user_text"].lower() and result.turns[0]["bot_text"]
    assert len({r.call_id for r in results}) == 2
    assert http_get(platform.health)[0] == 200
