"""The recorder over a real NATS server: events in, rows and public JSON events out."""

from __future__ import annotations

import json

import asyncpg
import nats
import redis.asyncio as aioredis

from tests.recorder.conftest import new_call_id, settle, wait_until
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import CallEnded, CallStarted, TurnMetrics
from vp_recorder.app import RecorderService
from vp_recorder.settings import RecorderSettings


async def test_call_through_real_nats(
    nats_url: str,
    nats_bus: NatsBus,
    settings: RecorderSettings,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
) -> None:
    received: list[dict[str, object]] = []
    watcher = await nats.connect(nats_url)

    async def collect(msg: nats.aio.msg.Msg) -> None:
        received.append({"subject": msg.subject, **json.loads(msg.data)})

    await watcher.subscribe(subjects.ALL_CALL_EVENTS, cb=collect)
    await watcher.flush()
    recorder_bus = await NatsBus.connect(nats_url, "recorder")
    service = RecorderService(settings)
    await service.start(recorder_bus)
    try:
        await recorder_bus._nc.flush()  # subscriptions registered on the server
        call_id = new_call_id()
        lc = subjects.lifecycle(call_id)
        for msg in (
            CallStarted(call_id=call_id, robot="demo", channel="phone", sample_rate=8000, ts_ms=1_000_000),
            TurnMetrics(call_id=call_id, turn_id="t1", speech_end_ts_ms=1_001_000, asr_final_ts_ms=1_001_500),
            TurnMetrics(
                call_id=call_id, turn_id="t2", speech_end_ts_ms=1_003_000, first_played_ts_ms=1_004_000
            ),
            CallEnded(call_id=call_id, reason="hangup", duration_ms=9000, ts_ms=1_009_000),
        ):
            await nats_bus.publish(lc, msg)
        await settle(service, 4)
        row = await pg.fetchrow("SELECT status, turns, duration_sec FROM calls WHERE call_id = $1", call_id)
        assert (row["status"], row["turns"], row["duration_sec"]) == ("ended", 2, 9.0)
        assert await redis_client.hget(f"call:{call_id}", "status") == "ended"

        await wait_until(lambda: len([e for e in received if e["call_id"] == call_id]) == 4)
        mine = [e for e in received if e["call_id"] == call_id]
        assert [(e["subject"], e["type"]) for e in mine] == [
            ("call_events.call.started", "call.started"),
            ("call_events.turn.completed", "turn.completed"),
            ("call_events.turn.completed", "turn.completed"),
            ("call_events.call.ended", "call.ended"),
        ]
        assert mine[2]["data"]["latency"]["voice_to_voice_ms"] == 1000  # type: ignore[index]
    finally:
        await service.drain(5)
        await recorder_bus.close()
        await watcher.close()
