"""An ASR instance taking a call over (failover), on the in-memory broker: the gateway's replay and
its unconfirmed turns are recognized whole, VAD events wait for the replay, a replaced VAD's late
events are dropped, finals carry the epoch, and a moved call is let go."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.failover.span_asr import span_text
from tests.failover.stack import caller_frame
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.providers import ProviderRegistry
from voiceplatform.wire import (
    AsrFinal,
    AssignReply,
    AssignRequest,
    AudioChunk,
    AudioReplay,
    OwnerChanged,
    ResumeTurn,
    VadSpeechEnded,
    VadSpeechStarted,
)
from vp_asr.app import AsrService
from vp_asr.settings import AsrSettings

RATE = 16000
CALL = "call-asr-t"
SPEECH = {**{s: True for s in range(10, 40)}, **{s: True for s in range(60, 110)}}


@pytest.fixture
async def service(broker: MemoryBroker, tmp_path: Path) -> AsyncIterator[AsrService]:
    (tmp_path / "span_bot").mkdir()
    config = {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": {"provider": "span", "fallback": []}}
    (tmp_path / "span_bot" / "config.json").write_text(json.dumps(config))
    registry = ProviderRegistry("asr", {"span": "tests.failover.span_asr:SpanAsr"})
    svc = AsrService(AsrSettings(robots_dir=tmp_path, instance_id="asr-new", preload_providers=[]), registry)
    await svc.start(broker.bus("asr"))
    yield svc
    await svc.drain(1.0)


def frames(first: int, last: int) -> list[bytes]:
    return [caller_frame(seq, SPEECH.get(seq, False)) for seq in range(first, last)]


async def test_recognizes_the_turns_the_old_owner_left_whole(
    broker: MemoryBroker, service: AsrService
) -> None:
    gw = broker.bus("gateway")
    finals: list[AsrFinal] = []

    async def on_final(env):  # type: ignore[no-untyped-def]
        finals.append(env.message)

    await gw.subscribe(subjects.asr(CALL), on_final)
    req = AssignRequest(
        call_id=CALL, role="asr", robot="span_bot", sample_rate=RATE, epoch=5, fence={"vad": 2}, replay=True
    )
    reply = await gw.request(subjects.assign("asr"), req)
    assert isinstance(reply, AssignReply) and reply.accepted

    turns = [
        ResumeTurn(turn_id="t-ended", start_ms=200, end_ms=800, speech_ms=600),
        ResumeTurn(turn_id="t-open", start_ms=1200),
    ]
    for seq, pcm in enumerate(frames(90, 140), start=90):  # live audio, partly before the replay
        await gw.publish(
            subjects.audio_in(CALL), AudioChunk(call_id=CALL, seq=seq, sample_rate=RATE, pcm=pcm)
        )
    # the replaced VAD (epoch 1) wakes up and starts a turn of its own: dropped
    await gw.publish(
        subjects.vad(CALL), VadSpeechStarted(call_id=CALL, turn_id="t-stale", audio_offset_ms=1900, epoch=1)
    )
    # the open turn ends (new VAD, epoch 2) before the replay is in: held until it is
    await gw.publish(
        subjects.vad(CALL),
        VadSpeechEnded(call_id=CALL, turn_id="t-open", audio_offset_ms=2200, speech_ms=1000, epoch=2),
    )
    await asyncio.sleep(0.05)
    assert finals == []
    replay = frames(0, 90)
    for first in (0, 50):
        await gw.publish(
            subjects.audio_replay(CALL, "asr"),
            AudioReplay(
                call_id=CALL,
                role="asr",
                epoch=5,
                first_seq=first,
                sample_rate=RATE,
                frames=replay[first : first + 50],
                last=first == 50,
                next_seq=90,
                turns=turns,
            ),
        )
    for _ in range(200):
        if len(finals) == 2:
            break
        await asyncio.sleep(0.01)
    by_turn = {f.turn_id: f for f in finals}
    assert set(by_turn) == {"t-ended", "t-open"}
    assert by_turn["t-ended"].text == span_text(10, 30)
    assert by_turn["t-open"].text == span_text(60, 50)
    assert all(f.epoch == 5 for f in finals)


async def test_a_moved_call_is_let_go(broker: MemoryBroker, service: AsrService) -> None:
    gw = broker.bus("gateway")
    req = AssignRequest(call_id=CALL, role="asr", robot="span_bot", sample_rate=RATE, epoch=1)
    assert (await gw.request(subjects.assign("asr"), req)).accepted  # type: ignore[attr-defined]
    await gw.publish(
        subjects.lifecycle(CALL), OwnerChanged(call_id=CALL, role="asr", instance_id="asr-new", epoch=1)
    )
    await asyncio.sleep(0.05)
    assert CALL in service.sessions  # its own assignment: stays
    await gw.publish(
        subjects.lifecycle(CALL), OwnerChanged(call_id=CALL, role="asr", instance_id="asr-other", epoch=2)
    )
    for _ in range(200):
        if CALL not in service.sessions:
            break
        await asyncio.sleep(0.01)
    assert CALL not in service.sessions and service.ownership is not None
    assert CALL not in service.ownership.calls
