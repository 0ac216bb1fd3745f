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

from tests.audio_fixtures import festival_available, utterance
from tests.chaos.conftest import ChaosPlatform
from tests.chaos.dialogue import Dialogue, hold_dialogue
from tests.chaos.faults import LogWatch, OwnerWatch, hit
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.skipif(not festival_available(), reason="festival with the Russian voice is not installed"),
]

QUESTIONS = [
    "Здравствуйте! У меня есть собака, что вы можете предложить?",
    "А какие у вас цены, это дорого?",
    "Хорошо, а что есть для детей?",
    "Спасибо, а доставка у вас есть?",
]
FAULT_TURN = 1  # the second utterance
STREAMING = ("vad", "asr")


async def call_with_fault(platform: ChaosPlatform, role: str, how: str) -> tuple[Dialogue, str]:
    """Hold the dialogue; hit ``role`` at turn 2 (streaming owners mid-utterance, per-turn workers as
    the turn is worked on). Returns the dialogue and the name of the instance hit."""
    bus = await NatsBus.connect(platform.env["NATS_URL"], "chaos-test")
    owners = OwnerWatch(role)
    sub = await bus.subscribe(subjects.heartbeat(role), owners.on_heartbeat) if role in STREAMING else None
    logs = LogWatch(platform.role(role))
    hit_name: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def fault(call_id: str) -> None:
        if role in STREAMING:
            pid = await owners.owner(call_id)
            proc = next(p for p in platform.role(role) if p.proc is not None and p.proc.pid == pid)
        else:
            proc = await logs.worker_of(call_id)
        hit(proc, how)
        hit_name.append(proc.name)

    async def hook(dialogue: Dialogue, turn: int, moment: str) -> None:
        if turn != FAULT_TURN:
            return
        if moment == "speaking":
            if role in STREAMING:
                tasks.append(asyncio.create_task(fault(dialogue.call_id)))
            else:
                logs.arm()  # the turn's work starts at the utterance's end: watch the logs from here
        elif moment == "spoken" and role not in STREAMING:
            tasks.append(asyncio.create_task(fault(dialogue.call_id)))

    try:
        utterances = [utterance(q) for q in QUESTIONS]
        dialogue = await hold_dialogue(platform.url, "pipeline_russian", utterances, hook=hook)
        for task in tasks:
            await task  # a fault that found no target fails the test here
    finally:
        if sub is not None:
            await sub.unsubscribe()
        await bus.close()
    return dialogue, hit_name[0] if hit_name else ""


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
