"""The gateway call session on the in-memory bus: the test plays the workers' side of the wire."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.config import load_robot
from voiceplatform.gateway import CallSession
from voiceplatform.wire import (
    AsrFinal,
    AssignReply,
    AudioChunk,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    TtsAudio,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)

RATE = 16000
FRAME = 640


class RecordingSink:
    def __init__(self) -> None:
        self.audio: list[tuple[float, bytes]] = []
        self.events: list[dict[str, Any]] = []
        self.closed = ""

    async def send_audio(self, pcm: bytes) -> None:
        self.audio.append((asyncio.get_running_loop().time(), pcm))

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def flush(self, turn_id: str) -> None:
        self.events.append({"type": "playback.flush", "turn_id": turn_id})

    async def close(self, reason: str) -> None:
        self.closed = reason


@pytest.fixture
def robot(tmp_path):
    folder = tmp_path / "robots" / "bot"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"llm": {"provider": "openai"}, "greeting_text": "Здравствуйте!"})
    )
    write_wav(folder / "greeting.wav", (np.ones(RATE // 5) * 1000).astype(np.int16), RATE)  # 200 ms
    return load_robot(folder)


async def start_call(broker, robot):
    workers = broker.bus("workers")
    seen: list[Any] = []

    async def assign(env: Envelope):
        return AssignReply(
            call_id=env.message.call_id, role=env.message.role, accepted=True, instance_id="w1"
        )

    async def record(env: Envelope):
        seen.append(env.message)

    await workers.subscribe(subjects.assign("vad"), assign, queue="vad")
    await workers.subscribe(subjects.assign("asr"), assign, queue="asr")
    await workers.subscribe(subjects.ALL_CALLS, record)
    sink = RecordingSink()
    session = CallSession(broker.bus("gateway"), robot, channel="web", sample_rate=RATE, sink=sink)
    await session.start()
    return session, sink, workers, seen


async def test_greeting_assignment_and_caller_audio(broker, robot):
    session, sink, _workers, seen = await start_call(broker, robot)
    await wait_for(lambda: session.owners == {"vad": "w1", "asr": "w1"})
    await wait_for(lambda: len(sink.audio) >= 10)  # greeting: 200 ms = 10 frames
    assert all(len(pcm) == FRAME for _, pcm in sink.audio)
    await session.push_audio(b"\0" * FRAME)
    await wait_for(lambda: any(isinstance(m, AudioChunk) for m in seen))
    assert isinstance(seen[0], CallStarted) and seen[0].robot == "bot"
    await session.end("test")
    await wait_for(lambda: any(isinstance(m, CallEnded) for m in seen))
    assert sink.closed == "test"


async def reply(workers, call_id, turn, sentences, chunk_frames=25):
    await workers.publish(
        subjects.vad(call_id), VadSpeechEnded(call_id=call_id, turn_id=turn, audio_offset_ms=0, speech_ms=900)
    )
    await workers.publish(
        subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id=turn, text="у меня собака")
    )
    for i, text in enumerate(sentences):
        await workers.publish(
            subjects.llm_sentence(call_id),
            LlmSentence(call_id=call_id, turn_id=turn, index=i, text=text, robot="bot", sample_rate=RATE),
        )
        await workers.publish(
            subjects.tts_audio(call_id),
            TtsAudio(
                call_id=call_id,
                turn_id=turn,
                index=i,
                seq=0,
                sample_rate=RATE,
                pcm=b"\x01\x00" * (FRAME // 2) * chunk_frames,
                last=True,
                text=text,
            ),
        )
    await workers.publish(
        subjects.llm_done(call_id),
        LlmDone(call_id=call_id, turn_id=turn, text=" ".join(sentences), sentences=len(sentences)),
    )


async def test_turn_plays_and_reports_metrics(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u1", audio_offset_ms=0))
    await reply(workers, call, "u1", ["Есть корм.", "Есть игрушки."], chunk_frames=5)
    await wait_for(lambda: any(isinstance(m, TurnMetrics) for m in seen))
    metrics = next(m for m in seen if isinstance(m, TurnMetrics))
    assert metrics.turn_id == "u1" and not metrics.interrupted
    assert metrics.bot_text == "Есть корм. Есть игрушки." and metrics.user_text == "у меня собака"
    assert 0 < metrics.speech_end_ts_ms <= metrics.asr_final_ts_ms <= metrics.first_played_ts_ms
    event = next(e for e in sink.events if e["type"] == "turn.metrics")
    assert event["voice_to_voice_ms"] is not None and event["voice_to_voice_ms"] >= 0
    await session.end("test")


async def test_barge_in_flushes_at_once_and_drops_stale_audio(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u1", audio_offset_ms=0))
    await reply(
        workers, call, "u1", ["Первое предложение ответа.", "Второе предложение ответа."], chunk_frames=50
    )
    await wait_for(lambda: any(e.get("type") == "bot.sentence" for e in sink.events))
    await asyncio.sleep(0.6)  # the robot is speaking
    frames_before = len(sink.audio)
    loop = asyncio.get_running_loop()
    t_speech = loop.time()
    await workers.publish(
        subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u2", audio_offset_ms=5000)
    )

    def u1_interrupt():
        return next((m for m in seen if isinstance(m, ControlInterrupt) and m.turn_id == "u1"), None)

    # the caller's side goes silent at once; the cut itself is decided while the caller speaks on
    await wait_for(lambda: any(e["type"] == "playback.flush" and e["turn_id"] == "u1" for e in sink.events))
    # at once, not when the reply would have ended (seconds away)
    assert loop.time() - t_speech < 1.0
    await wait_for(lambda: u1_interrupt() is not None)
    interrupt = u1_interrupt()
    t_interrupt = loop.time()
    assert interrupt.turn_id == "u1" and interrupt.by_turn_id == "u2"
    assert interrupt.played_text.startswith("Первое") and interrupt.played_ms > 0
    # late audio of the interrupted turn (already in flight) is dropped, nothing more is played
    await workers.publish(
        subjects.tts_audio(call),
        TtsAudio(
            call_id=call, turn_id="u1", index=2, seq=0, sample_rate=RATE, pcm=b"\x05\x00" * 8000, last=True
        ),
    )
    await asyncio.sleep(0.2)
    after = sink.audio[frames_before:]
    stale = [pcm for t, pcm in after if t > t_interrupt and pcm[:2] in (b"\x01\x00", b"\x05\x00")]
    assert not stale, "audio of the interrupted turn was played after the barge-in"
    m = next(m for m in seen if isinstance(m, TurnMetrics) and m.turn_id == "u1")
    assert m.interrupted and m.played_text == interrupt.played_text
    await session.end("test")


async def test_robot_hangup_ends_call_after_goodbye_is_played(broker, robot):
    session, _sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u1", audio_offset_ms=0))
    await reply(workers, call, "u1", ["До свидания!"], chunk_frames=5)
    await workers.publish(
        subjects.llm_done(call),
        LlmDone(call_id=call, turn_id="u1", text="До свидания!", sentences=1, hangup=True),
    )
    await asyncio.wait_for(session.closed.wait(), 5)
    assert session.end_reason == "robot_hangup"
    assert any(isinstance(m, CallEnded) and m.reason == "robot_hangup" for m in seen)


async def test_owner_released_triggers_reassignment(broker, robot):
    from voiceplatform.gateway import GatewayDirectory
    from voiceplatform.wire import OwnerReleased

    workers = broker.bus("workers")
    answers = iter(["w1", "w2", "w3", "w4"])

    async def assign(env: Envelope):
        return AssignReply(
            call_id=env.message.call_id, role=env.message.role, accepted=True, instance_id=next(answers)
        )

    await workers.subscribe(subjects.assign("vad"), assign, queue="vad")
    await workers.subscribe(subjects.assign("asr"), assign, queue="asr")
    gw = broker.bus("gateway")
    directory = GatewayDirectory(gw)
    await directory.start()
    session = CallSession(
        gw, robot, channel="web", sample_rate=RATE, sink=RecordingSink(), directory=directory
    )
    await session.start()
    await wait_for(lambda: len(session.owners) == 2)
    vad_owner = session.owners["vad"]
    await workers.publish(
        subjects.released("vad"), OwnerReleased(call_id=session.call_id, role="vad", instance_id=vad_owner)
    )
    await wait_for(lambda: session.owners.get("vad") not in (None, vad_owner))
    await session.end("test")
    await directory.stop()


async def test_frames_go_out_batched_through_the_outbox_and_packed_per_message(broker, robot):
    """Two frames per audio.chunk (v2) through a 5 ms outbox: every frame arrives once, in order,
    numbered by frame; a lone frame left at the end goes out as v1 when the call ends."""
    from voiceplatform.gateway.frame_outbox import FrameOutbox

    got: list[AudioChunk] = []

    async def on_chunk(env: Envelope):
        got.append(env.message)

    listener = broker.bus("vad")
    outbox = FrameOutbox(broker.bus("gateway"), batch_ms=5)
    session = CallSession(
        broker.bus("gateway"),
        robot,
        channel="phone",
        sample_rate=RATE,
        sink=RecordingSink(),
        outbox=outbox,
        frames_per_message=2,
    )
    await listener.subscribe(subjects.audio_in(session.call_id), on_chunk)
    await session.start()
    frames = [bytes([i]) * FRAME for i in range(5)]
    for frame in frames:
        await session.push_audio(frame)
    assert not got  # nothing is published before the outbox's delay
    await wait_for(lambda: len(got) == 2)
    await session.end("test")
    await outbox.close()
    await wait_for(lambda: len(got) == 3)
    assert [(c.seq, c.v, len(c.pcm) // FRAME) for c in got] == [(0, 2, 2), (2, 2, 2), (4, 1, 1)]
    assert [pcm for c in got for _, pcm in c.frames()] == frames
    assert [seq for seq, _ in session.streaming.audio_log.frames] == [0, 1, 2, 3, 4]  # the replay's log
