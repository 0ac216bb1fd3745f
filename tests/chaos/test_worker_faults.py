"""Any worker may die or hang at any moment and the caller does not notice (issue 11).

Two instances of every worker; a four-turn call; at turn 2 the instance that holds the call or works
on the turn is killed (SIGKILL) or frozen (SIGSTOP; it stays frozen for the rest of the call, then is
killed), so every later turn that NATS would hand to it is at stake too. Every utterance must get its
reply, nothing the caller said may be lost, and the record must be complete: four turns, each
played to its end, none recorded as a barge-in.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.audio_fixtures import festival_available
from tests.chaos.scenario import QUESTIONS, call_with_fault

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]


async def recorded_turns(dsn: str, call_id: str) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            row = await conn.fetchrow("select status, turns, end_reason from calls where call_id=$1", call_id)
            if row and row["status"] == "ended":
                break
            await asyncio.sleep(0.1)
        turns = await conn.fetch(
            "select turn_id, user_text, bot_text, interrupted from call_turns "
            "where call_id=$1 order by created_at",
            call_id,
        )
    finally:
        await conn.close()
    return row, turns


@pytest.mark.parametrize("how", ["kill", "freeze"])
@pytest.mark.parametrize("role", ["vad", "asr", "prompt-router", "llm", "tts"])
async def test_a_worker_fault_costs_the_caller_nothing(chaos_platform, postgres_dsn, role, how):
    try:
        dialogue, hit_name = await call_with_fault(chaos_platform, role, how)
        assert hit_name, "the fault found no instance to hit"
        answered = [t for t in dialogue.turns if t.reply_audio_at is not None]
        gaps = [round(t.gap_s, 2) if t.gap_s is not None else None for t in dialogue.turns]
        detail = f"{role} {how} hit {hit_name}; gaps {gaps}\n{chaos_platform.logs_text(15)}"
        assert len(answered) == len(QUESTIONS), detail
        outcomes = [m.get("outcome") for t in dialogue.turns for m in t.metrics]
        assert all(o == "played" for o in outcomes), (outcomes, detail)
        row, turns = await recorded_turns(postgres_dsn, dialogue.call_id)
        assert row is not None and row["status"] == "ended", detail
        heard = [t for t in turns if not t["turn_id"].endswith("-greeting")]
        summary = [(t["user_text"], t["interrupted"], bool(t["bot_text"])) for t in heard]
        assert len(heard) == len(QUESTIONS), (summary, detail)
        assert all(t["bot_text"] and not t["interrupted"] for t in heard), (summary, detail)
    finally:
        chaos_platform.restore()
