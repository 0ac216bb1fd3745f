"""A reply whose LLM instance took the work and hung, through the gateway session on a real NATS.

The only LLM worker (``tests.stand_ins.hung_llm``) takes the turn's ``llm.request`` and never
answers. The session's own deadline watcher (real clock, the robot's smallest allowed limit) must
say the fallback line to the caller, publish a ``stage.error``, and report the turn as a fallback,
which the recorder's translations keep as such (not as a barge-in). A private NATS server: the
stand-in takes assignments and LLM work, which must not reach other tests sharing the loopback one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.gateway.test_call_session import FRAME, RATE, RecordingSink
from tests.stand_ins.hung_llm import HungLlm
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.config import load_robot
from voiceplatform.gateway import CallSession
from voiceplatform.gateway.fallback_line import DEFAULT_TEXT, DEFAULT_WAV
from voiceplatform.gateway.greeting import wav_pcm
from voiceplatform.wire import (
    AsrFinal,
    ControlInterrupt,
    Message,
    StageError,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)
from voiceplatform_devstack.devinfra import EmbeddedNats
from vp_recorder.events import public_event
from vp_recorder.stored import StoredEvent
from vp_recorder.summary import call_summary
from vp_recorder.transcript import build_transcript


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedNats.start(tmp_path_factory.mktemp("nats-deadlines"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def buses(private_nats: str) -> AsyncIterator[tuple[NatsBus, NatsBus, NatsBus]]:
    gateway = await NatsBus.connect(private_nats, "gateway")
    workers = await NatsBus.connect(private_nats, "workers")
    observer = await NatsBus.connect(private_nats, "observer")
    try:
        yield gateway, workers, observer
    finally:
        for bus in (gateway, workers, observer):
            await bus.close()


@pytest.fixture
def robot(tmp_path: Path):
    folder = tmp_path / "robots" / "bot"
    folder.mkdir(parents=True)
    config = {
        "llm": {"provider": "openai"},
        "greeting_text": "Здравствуйте!",
        "turns": {"no_input_s": 0},
        "deadlines": {"reply_ms": 500},
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_wav(folder / "greeting.wav", (np.ones(RATE // 10) * 1000).astype(np.int16), RATE)  # 100 ms
    return load_robot(folder)


async def test_a_hung_llm_gives_the_fallback_line_a_stage_error_and_a_fallback_turn(buses, robot):
    gateway, workers, observer = buses
    hung = HungLlm(workers)
    await hung.start()
    seen: list[tuple[str, Message]] = []

    async def record(env: Envelope) -> None:
        seen.append((env.subject, env.message))

    await observer.subscribe(subjects.ALL_CALLS, record)
    sink = RecordingSink()
    session = CallSession(gateway, robot, channel="web", sample_rate=RATE, sink=sink)
    await session.start()
    call = session.call_id
    try:
        await wait_for(lambda: session.owners == {"vad": "hung-1", "asr": "hung-1"}, timeout=10)
        await wait_for(lambda: not session.turns.live(), timeout=10)  # the greeting was heard
        await workers.publish(
            subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u1", audio_offset_ms=0)
        )
        await workers.publish(
            subjects.vad(call), VadSpeechEnded(call_id=call, turn_id="u1", audio_offset_ms=900, speech_ms=900)
        )
        await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u1", text="у меня собака"))

        messages = lambda: [m for _, m in seen]  # noqa: E731
        await wait_for(lambda: any(isinstance(m, TurnMetrics) for m in messages()), timeout=30)
        assert [r.turn_id for r in hung.taken] == ["u1"]  # the work was taken, and never answered

        [error] = [m for m in messages() if isinstance(m, StageError)]
        assert (error.turn_id, error.stage, error.kind) == ("u1", "llm", "deadline")
        [interrupt] = [m for m in messages() if isinstance(m, ControlInterrupt) and m.turn_id == "u1"]
        assert interrupt.reason == "deadline" and not interrupt.by_turn_id
        [metrics] = [m for m in messages() if isinstance(m, TurnMetrics)]
        assert metrics.outcome == "fallback" and not metrics.interrupted and metrics.bot_text == DEFAULT_TEXT

        line = wav_pcm(DEFAULT_WAV, RATE)
        heard = b"".join(pcm for _, pcm in sink.audio)
        assert line[: len(line) - len(line) % FRAME] in heard  # the caller heard the whole line
        errors = [e for e in sink.events if e["type"] == "error"]
        assert [(e["stage"], e["kind"], e["turn_id"]) for e in errors] == [("llm", "deadline", "u1")]
        assert errors[0]["detail"].startswith("no first llm.sentence after")  # the cause, for the page
    finally:
        await session.end("test")
        await hung.stop()

    # as the recorder keeps it: a fallback turn with its error, no barge-in
    stored = [StoredEvent(seq, subject, msg) for seq, (subject, msg) in enumerate(seen, start=1)]
    public = [e for s in stored if (e := public_event(s.message, s.event_id)) is not None]
    completed = [e["data"] for e in public if e["type"] == "turn.completed"]
    assert [(d["turn_id"], d["outcome"], d["interrupted"]) for d in completed] == [("u1", "fallback", False)]
    assert not [e for e in public if e["type"] == "barge_in"]
    summary = call_summary(stored)
    assert summary["errors"] == 1 and summary["barge_ins"] == 0
    doc = build_transcript(stored)
    bot = [s for s in doc["segments"] if s["role"] == "assistant" and s["turn_id"] == "u1"]
    assert [(s["text"], s["interrupted"]) for s in bot] == [(DEFAULT_TEXT, False)]
    assert doc["metadata"]["errors"] == 1 and doc["metadata"]["barge_ins"] == 0
