"""A gateway killed mid-call: the call is closed in every store (``gateway_lost``) within a bounded
time and its dialogue state is deleted, even though nobody ever sent ``call.ended`` (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.audio_fixtures import festival_available, utterance
from tests.chaos.dialogue import Dialogue, hold_dialogue
from tests.chaos.faults import hit
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]
CLOSED_WITHIN_S = 60.0  # generous: the sweeper's own bound is configured far below this


async def test_a_killed_gateway_leaves_no_call_open(chaos_platform, postgres_dsn, redis_url):
    gateway = chaos_platform.role("gateway-web")[0]
    dialogue_box: list[Dialogue] = []

    async def hook(dialogue: Dialogue, turn: int, moment: str) -> None:
        if turn == 1 and moment == "speaking":
            dialogue_box.append(dialogue)
            hit(gateway, "kill")

    says = [utterance("Здравствуйте! У меня есть собака, что предложите?"), utterance("А цены какие?")]
    try:
        with contextlib.suppress(Exception):  # the socket dies with the gateway
            await hold_dialogue(chaos_platform.url, "pipeline_russian", says, hook=hook, reply_timeout_s=10)
        assert dialogue_box and dialogue_box[0].call_id, "the call never started"
        call_id = dialogue_box[0].call_id
        killed_at = time.monotonic()
        row = None
        conn = await asyncpg.connect(postgres_dsn)
        try:
            while time.monotonic() - killed_at < CLOSED_WITHIN_S:
                row = await conn.fetchrow("select status, end_reason from calls where call_id=$1", call_id)
                if row and row["status"] == "ended":
                    break
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
        assert row is not None and row["status"] == "ended", (row, chaos_platform.logs_text())
        assert row["end_reason"] == "gateway_lost"
        r = aioredis.from_url(redis_url)
        try:
            session = await r.hgetall(f"call:{call_id}")
        finally:
            await r.aclose()
        assert session.get(b"status") == b"ended" and session.get(b"end_reason") == b"gateway_lost"
        bus = await NatsBus.connect(chaos_platform.env["NATS_URL"], "chaos-test", **chaos_platform.nats_admin)
        try:
            kv = await bus.key_value(subjects.DIALOG_BUCKET)
            assert await kv.get(call_id) is None, "the dialogue state of a closed call is still in KV"
        finally:
            await bus.close()
    finally:
        chaos_platform.restore()
