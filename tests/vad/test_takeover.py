"""A VAD instance taking a call over mid-utterance (failover), on the in-memory broker: the replay
first, the open turn continued under its id, live frames after it, the epoch on every event, and
silence once the call moved on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.vad.helpers import chunks, collect, make_robot, silence, tone
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.wire import (
    AssignReply,
    AssignRequest,
    AudioReplay,
    OwnerChanged,
    ResumeTurn,
    VadSpeechEnded,
    VadSpeechPaused,
    VadSpeechStarted,
)
from vp_vad.app import VadService
from vp_vad.settings import VadSettings

RATE = 16000
CALL = "call-t"


@pytest.fixture
async def service(broker: MemoryBroker, tmp_path: Path):  # type: ignore[no-untyped-def]
    make_robot(tmp_path, "energy_bot", {"enabled": True, "energy_threshold": 200})
    svc = VadService(VadSettings(robots_dir=tmp_path, instance_id="vad-new", preload_silero=False))
    await svc.start(broker.bus("vad"))
    yield svc
    await svc.drain(1.0)


async def take_over(broker: MemoryBroker, epoch: int) -> AssignReply:
    req = AssignRequest(
        call_id=CALL, role="vad", robot="energy_bot", sample_rate=RATE, epoch=epoch, replay=True
    )
    reply = await broker.bus("gateway").request(subjects.assign("vad"), req)
    assert isinstance(reply, AssignReply) and reply.accepted
    return reply


async def test_takes_the_open_turn_over_from_the_replay(broker: MemoryBroker, service: VadService) -> None:
    gw = broker.bus("gateway")
    events = await collect(gw, subjects.vad(CALL))
    # the caller spoke from 500 ms; the old owner had said vad.speech_started for turn "t-old"
    audio = chunks(CALL, np.concatenate([silence(RATE, 500), tone(RATE, 1500), silence(RATE, 800)]), RATE)
    await take_over(broker, epoch=3)
    replayed, live = audio[:60], audio[60:]  # the replay stops 1.2 s in, mid-utterance
    for chunk in live[:10]:  # live frames arrive before the replay: held, not lost or reordered
        await gw.publish(subjects.audio_in(CALL), chunk)
    turn = ResumeTurn(turn_id="t-old", start_ms=500)
    for first in (0, 50):
        batch = replayed[first : first + 50]
        await gw.publish(
            subjects.audio_replay(CALL, "vad"),
            AudioReplay(
                call_id=CALL,
                role="vad",
                epoch=3,
                first_seq=batch[0].seq,
                sample_rate=RATE,
                frames=[c.pcm for c in batch],
                last=first == 50,
                next_seq=60,
                turns=[turn],
            ),
        )
    for chunk in live[10:]:
        await gw.publish(subjects.audio_in(CALL), chunk)
    await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)

    assert events.of(VadSpeechStarted) == []  # the turn was started by the old owner
    (ended,) = events.of(VadSpeechEnded)
    assert ended.turn_id == "t-old" and ended.epoch == 3
    assert (ended.audio_offset_ms, ended.speech_ms) == (2000, 1500)  # the whole utterance, no gap
    assert all(e.epoch == 3 for e in events.messages)
    assert service.sessions[CALL].dropped == 0


async def test_a_moved_call_is_closed_without_a_word(broker: MemoryBroker, service: VadService) -> None:
    gw = broker.bus("gateway")
    events = await collect(gw, subjects.vad(CALL))
    req = AssignRequest(call_id=CALL, role="vad", robot="energy_bot", sample_rate=RATE, epoch=1)
    assert (await gw.request(subjects.assign("vad"), req)).accepted  # type: ignore[attr-defined]
    for chunk in chunks(CALL, np.concatenate([silence(RATE, 200), tone(RATE, 600)]), RATE):
        await gw.publish(subjects.audio_in(CALL), chunk)
    await events.wait(lambda: len(events.of(VadSpeechStarted)) == 1)

    await gw.publish(
        subjects.lifecycle(CALL), OwnerChanged(call_id=CALL, role="vad", instance_id="vad-other", epoch=2)
    )
    await events.wait(lambda: CALL not in service.sessions and CALL not in service.ownership.calls)
    # an open utterance is not flushed: the new owner carries it on
    assert events.of(VadSpeechEnded) == [] and events.of(VadSpeechPaused) == []


async def test_a_held_call_assigned_anew_gets_a_fresh_session(
    broker: MemoryBroker, service: VadService
) -> None:
    gw = broker.bus("gateway")
    first = AssignRequest(call_id=CALL, role="vad", robot="energy_bot", sample_rate=RATE, epoch=1)
    assert (await gw.request(subjects.assign("vad"), first)).accepted  # type: ignore[attr-defined]
    held = service.sessions[CALL]
    # the same epoch again (a retried request): the same session
    assert (await gw.request(subjects.assign("vad"), first)).accepted  # type: ignore[attr-defined]
    assert service.sessions[CALL] is held
    # asked again under a newer epoch (the call moved away and came back): a new session for the replay
    await take_over(broker, epoch=4)
    assert service.sessions[CALL] is not held and held.closed and held.moved
    assert service.sessions[CALL].epoch == 4 and service.ownership.epoch(CALL) == 4


async def test_a_request_met_by_a_stalled_loop_is_refused(broker: MemoryBroker, service: VadService) -> None:
    req = AssignRequest(call_id=CALL, role="vad", robot="energy_bot", sample_rate=RATE, epoch=2, replay=True)
    service.ownership._beat_at -= 5  # its loop has not run for 5 s: the request waited in its socket
    reply = await broker.bus("gateway").request(subjects.assign_to("vad", "vad-new"), req)
    assert isinstance(reply, AssignReply) and not reply.accepted and reply.reason == "stalled"
    assert CALL not in service.sessions


async def test_drain_hands_an_open_utterance_over_unended(broker: MemoryBroker, service: VadService) -> None:
    gw = broker.bus("gateway")
    events = await collect(gw, subjects.vad(CALL))
    released = await collect(gw, subjects.released("vad"))
    req = AssignRequest(call_id=CALL, role="vad", robot="energy_bot", sample_rate=RATE, epoch=1)
    assert (await gw.request(subjects.assign("vad"), req)).accepted  # type: ignore[attr-defined]
    for chunk in chunks(CALL, np.concatenate([silence(RATE, 200), tone(RATE, 600)]), RATE):
        await gw.publish(subjects.audio_in(CALL), chunk)
    await events.wait(lambda: len(events.of(VadSpeechStarted)) == 1)
    await service.drain(1.0)
    await released.wait(lambda: len(released.messages) == 1)
    # the gateway replays the utterance to the next owner, which ends it (in one piece)
    assert events.of(VadSpeechEnded) == []
