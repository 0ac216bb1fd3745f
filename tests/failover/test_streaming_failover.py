"""Failover of the streaming owners, with real processes on a real NATS server.

Two instances of vad and of asr run as processes; the gateway's call session runs here. The caller's
frames name themselves and the test ASR engine reports which speech frames a transcript covers, so
"the utterance kept its turn and its whole text" is one string comparison.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.failover.conftest import INSTANCES
from tests.failover.span_asr import span_text
from tests.failover.stack import Beats, Gateway, Workers, caller_turns, speak, wait_until
from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.gateway.failover import STALE_OWNER_EVENTS
from voiceplatform.gateway.session import CallSession
from voiceplatform.wire import Message

LEAD, SPEECH, TAIL = 25, 150, 60  # frames: silence, one 3 s utterance, silence (its end)
FAULT_AT = LEAD + SPEECH // 2  # the owner dies 1.5 s into the utterance

Stack = tuple[Workers, Gateway, Beats]


def other(role: str, instance: str) -> str:
    (rest,) = [i for i in INSTANCES[role] if i != instance]
    return rest


async def start_call(gateway: Gateway, robots) -> CallSession:  # type: ignore[no-untyped-def]
    session = await gateway.call(robots)
    await wait_until(lambda: {"vad", "asr"} <= set(session.owners), 10, "both owners assigned")
    return session


async def say_with_fault(session: CallSession, fault, at: int = FAULT_AT) -> int:  # type: ignore[no-untyped-def]
    """One utterance; ``fault()`` runs at frame ``at``. Returns the utterance's first speech frame."""
    turns_at_fault: list[int] = []

    async def on_frame(i: int) -> None:
        if i == at:
            turns_at_fault.append(len(caller_turns(session)))
            fault()

    first = await speak(session, [LEAD <= i < LEAD + SPEECH for i in range(LEAD + SPEECH + TAIL)], on_frame)
    assert turns_at_fault == [1 if at > LEAD + 20 else 0], "the utterance had (not) started before the fault"
    return first + LEAD


async def the_whole_utterance(session: CallSession, first_speech: int) -> None:
    await wait_until(lambda: any(t.user_text for t in caller_turns(session)), 20, "the transcript")
    await asyncio.sleep(0.3)  # a second turn or transcript would show up now
    turns = caller_turns(session)
    assert len(turns) == 1, f"one utterance, one turn: {[(t.turn_id, t.user_text) for t in turns]}"
    assert turns[0].user_text == span_text(first_speech, SPEECH)


@pytest.mark.parametrize("role", ["vad", "asr"])
async def test_owner_killed_mid_utterance(stack: Stack, failover_robots, role: str) -> None:  # type: ignore[no-untyped-def]
    workers, gateway, _beats = stack
    session = await start_call(gateway, failover_robots)
    victim = session.owners[role]
    first = await say_with_fault(session, lambda: workers.kill(victim))
    await wait_until(lambda: session.owners.get(role) == other(role, victim), 10, "re-assignment")
    assert session.epochs.current[role] > 1
    await the_whole_utterance(session, first)
    await session.end("test")


async def test_vad_owner_killed_as_speech_begins(stack: Stack, failover_robots) -> None:  # type: ignore[no-untyped-def]
    """Killed before it confirmed the start (no turn yet): the new owner finds the onset in the replay."""
    workers, gateway, _beats = stack
    session = await start_call(gateway, failover_robots)
    victim = session.owners["vad"]
    first = await say_with_fault(session, lambda: workers.kill(victim), at=LEAD + 1)
    await wait_until(lambda: session.owners.get("vad") == other("vad", victim), 10, "re-assignment")
    await the_whole_utterance(session, first)
    await session.end("test")


@pytest.mark.parametrize("role", ["vad", "asr"])
async def test_frozen_owner_fails_over_and_its_late_events_are_ignored(
    stack: Stack,
    failover_robots,  # type: ignore[no-untyped-def]
    role: str,
) -> None:
    workers, gateway, beats = stack
    session = await start_call(gateway, failover_robots)
    frozen, old_epoch = session.owners[role], session.epochs.current[role]
    published: list[Message] = []

    async def record(env: Envelope) -> None:
        published.append(env.message)

    await gateway.bus.subscribe(
        subjects.vad(session.call_id) if role == "vad" else subjects.asr(session.call_id), record
    )
    first = await say_with_fault(session, lambda: workers.signal(frozen, signal.SIGSTOP))
    await wait_until(lambda: session.owners.get(role) == other(role, frozen), 10, "re-assignment")
    await the_whole_utterance(session, first)
    stale_before = STALE_OWNER_EVENTS.labels(role)._value.get()
    seen_before = len(published)

    beats.calls.pop(frozen, None)
    workers.signal(frozen, signal.SIGCONT)
    # it wakes up with the audio it missed, hears the call moved, and lets it go
    await wait_until(lambda: frozen in beats.calls, 10, "the woken owner's heartbeat")
    await wait_until(lambda: session.call_id not in beats.calls[frozen], 10, "the woken owner letting go")
    await asyncio.sleep(0.5)
    turns = caller_turns(session)
    assert len(turns) == 1 and turns[0].user_text == span_text(first, SPEECH)
    assert session.owners[role] == other(role, frozen) and session.epochs.current[role] > 1
    # what it published on waking (if anything got out before it heard the news) was dropped
    late = [m for m in published[seen_before:] if getattr(m, "epoch", 0) == old_epoch]
    assert STALE_OWNER_EVENTS.labels(role)._value.get() - stale_before == len(late)
    await session.end("test")


async def test_late_heartbeats_within_tolerance_keep_the_owner(stack: Stack, failover_robots) -> None:  # type: ignore[no-untyped-def]
    workers, gateway, _beats = stack
    session = await start_call(gateway, failover_robots)
    owners, epochs = dict(session.owners), dict(session.epochs.current)
    for _ in range(5):  # a busy owner: its loop stalls a quarter of a second, now and then
        for instance in owners.values():
            workers.signal(instance, signal.SIGSTOP)
        await asyncio.sleep(0.25)
        for instance in owners.values():
            workers.signal(instance, signal.SIGCONT)
        await asyncio.sleep(0.5)
    first = await speak(session, [LEAD <= i < LEAD + SPEECH for i in range(LEAD + SPEECH + TAIL)])
    await the_whole_utterance(session, first + LEAD)
    assert session.owners == owners
    assert session.epochs.current == epochs  # never re-assigned
    await session.end("test")
