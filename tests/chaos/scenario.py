"""One call with one fault in it: the scenario the chaos tests assert on and bench_failover times."""

from __future__ import annotations

import asyncio

from tests.audio_fixtures import utterance
from tests.chaos.dialogue import Dialogue, hold_dialogue
from tests.chaos.faults import LogWatch, OwnerWatch, hit
from tests.chaos.platform import ChaosPlatform
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus

QUESTIONS = [
    "Здравствуйте! У меня есть собака, что вы можете предложить?",
    "А какие у вас цены, это дорого?",
    "Хорошо, а что есть для детей?",
    "Спасибо, а доставка у вас есть?",
]
FAULT_TURN = 1  # the second utterance
STREAMING = ("vad", "asr")


async def call_with_fault(
    platform: ChaosPlatform,
    role: str,
    how: str,
    questions: list[str] = QUESTIONS,
    fault_turn: int = FAULT_TURN,
) -> tuple[Dialogue, str]:
    """Hold the dialogue; hit ``role`` at ``fault_turn`` (streaming owners mid-utterance, per-turn workers as
    the turn is worked on). Returns the dialogue and the name of the instance hit."""
    bus = await NatsBus.connect(platform.env["NATS_URL"], "chaos-test", **platform.nats_admin)
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
        if turn != fault_turn:
            return
        if moment == "speaking":
            if role in STREAMING:
                tasks.append(asyncio.create_task(fault(dialogue.call_id)))
            else:
                logs.arm()  # the turn's work starts at the utterance's end: watch the logs from here
        elif moment == "spoken" and role not in STREAMING:
            tasks.append(asyncio.create_task(fault(dialogue.call_id)))

    try:
        utterances = [utterance(q) for q in questions]
        dialogue = await hold_dialogue(platform.url, "pipeline_russian", utterances, hook=hook)
        for task in tasks:
            await task  # a fault that found no target fails the test here
    finally:
        if sub is not None:
            await sub.unsubscribe()
        await bus.close()
    return dialogue, hit_name[0] if hit_name else ""
