"""Per-stage deadlines of a robot turn: the pure clock, and the gateway session on a fake clock.

The session's own deadline watcher runs on the real clock with the default limits (seconds), far
beyond these tests; each test moves time by calling ``check_deadlines`` with a chosen moment.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.gateway.test_call_session import FRAME, RATE, start_call
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.clock import now_ms
from voiceplatform.config import DeadlinesConfig, load_robot
from voiceplatform.gateway.deadlines import Missed, StageClock
from voiceplatform.gateway.fallback_line import DEFAULT_TEXT, DEFAULT_WAV
from voiceplatform.gateway.greeting import wav_pcm
from voiceplatform.gateway.turns import TurnState
from voiceplatform.wire import (
    AsrFinal,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    StageError,
    TtsAudio,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)

CFG = DeadlinesConfig(reply_ms=3000, sentence_ms=2000, audio_ms=1000)
REPLY_PCM = b"\x01\x00" * (FRAME // 2)  # one frame of the test "voice"


# ---- the clock alone -----------------------------------------------------------------------------
def test_nothing_is_due_before_the_reply_is_awaited() -> None:
    assert StageClock().missed(10**9, CFG) is None


def test_the_first_sentence_has_the_reply_deadline() -> None:
    clock = StageClock()
    clock.reply_expected(1000)
    assert clock.missed(4000, CFG) is None
    assert clock.missed(4001, CFG) == Missed("llm", "first llm.sentence", 3001, 3000)


def test_each_sentence_restarts_the_llm_wait_until_llm_done() -> None:
    clock = StageClock()
    clock.reply_expected(0)
    clock.sentence(0, 2500)
    clock.audio(0, True, 2600)
    assert clock.missed(4000, CFG) is None  # the first sentence came in time
    missed = clock.missed(4501, CFG)
    assert missed is not None and missed.stage == "llm" and missed.awaited == "llm.sentence or llm.done"
    clock.llm_done()
    assert clock.missed(10**9, CFG) is None


def test_llm_done_overtaking_the_last_sentence_is_not_a_wait() -> None:
    clock = StageClock()
    clock.reply_expected(0)
    clock.llm_done()
    clock.sentence(0, 100)
    clock.audio(0, True, 200)
    assert clock.missed(10**9, CFG) is None
    clock.reply_expected(300)  # a late transcript does not restart a finished reply
    assert clock.missed(10**9, CFG) is None


def test_every_sentence_awaits_its_audio_until_the_last_chunk() -> None:
    clock = StageClock()
    clock.sentence(0, 0)
    clock.sentence(1, 0)
    clock.llm_done()
    clock.audio(0, False, 900)  # a chunk restarts the wait of its sentence
    clock.audio(1, True, 900)
    assert clock.missed(1900, CFG) is None
    assert clock.missed(1901, CFG) == Missed("tts", "tts.audio of sentence 0", 1001, 1000)
    clock.audio(0, True, 1950)
    clock.audio(0, False, 1960)  # a repeat after the last chunk (a retried sentence) waits for nothing
    assert clock.missed(10**9, CFG) is None


def test_missed_says_what_was_awaited() -> None:
    assert Missed("tts", "tts.audio of sentence 2", 5100, 5000).detail == (
        "no tts.audio of sentence 2 after 5100 ms (deadline 5000 ms)"
    )


# ---- the gateway session ---------------------------------------------------------------------------
@pytest.fixture
def robot(tmp_path):
    folder = tmp_path / "robots" / "bot"
    folder.mkdir(parents=True)
    config = {
        "llm": {"provider": "openai"},
        "greeting_text": "Здравствуйте!",
        "turns": {"no_input_s": 0},
        "deadlines": {"reply_ms": 3000, "sentence_ms": 2000, "audio_ms": 1000},
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_wav(folder / "greeting.wav", (np.ones(RATE // 10) * 1000).astype(np.int16), RATE)  # 100 ms
    return load_robot(folder)


async def caller_turn(workers, call: str, turn: str, text: str = "у меня собака") -> None:
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id=turn, audio_offset_ms=0))
    await workers.publish(
        subjects.vad(call), VadSpeechEnded(call_id=call, turn_id=turn, audio_offset_ms=900, speech_ms=900)
    )
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id=turn, text=text))


async def sentence(workers, call: str, turn: str, index: int, text: str, frames: int | None = 5) -> None:
    """``llm.sentence`` ``index``, then (unless ``frames`` is None) all its audio."""
    await workers.publish(
        subjects.llm_sentence(call),
        LlmSentence(call_id=call, turn_id=turn, index=index, text=text, robot="bot", sample_rate=RATE),
    )
    if frames is not None:
        await workers.publish(
            subjects.tts_audio(call),
            TtsAudio(
                call_id=call,
                turn_id=turn,
                index=index,
                seq=0,
                sample_rate=RATE,
                pcm=REPLY_PCM * frames,
                last=True,
                text=text,
            ),
        )


def metrics_of(seen, turn_id: str) -> TurnMetrics | None:
    return next((m for m in seen if isinstance(m, TurnMetrics) and m.turn_id == turn_id), None)


def errors_of(seen, turn_id: str) -> list[StageError]:
    return [m for m in seen if isinstance(m, StageError) and m.turn_id == turn_id]


def heard(sink) -> bytes:
    return b"".join(pcm for _, pcm in sink.audio)


def fallback_frames(rate: int = RATE, path=DEFAULT_WAV) -> bytes:
    pcm = wav_pcm(path, rate)
    return pcm[: len(pcm) - len(pcm) % FRAME]


async def test_a_reply_that_never_comes_becomes_the_fallback_line(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await wait_for(lambda: len(sink.audio) >= 5)  # the greeting played
    await caller_turn(workers, call, "u1")
    await wait_for(lambda: session.turns.get("u1") is not None and session.turns.get("u1").expects_reply)

    await session.keeper.check_deadlines(now_ms() + 2000)
    assert not errors_of(seen, "u1")  # not yet due
    await session.keeper.check_deadlines(now_ms() + 3500)

    await wait_for(lambda: metrics_of(seen, "u1") is not None, timeout=10)
    [error] = errors_of(seen, "u1")
    assert (error.stage, error.kind, error.retryable) == ("llm", "deadline", False)
    assert "first llm.sentence" in error.detail
    [interrupt] = [m for m in seen if isinstance(m, ControlInterrupt) and m.turn_id == "u1"]
    assert interrupt.reason == "deadline" and interrupt.by_turn_id == ""
    m = metrics_of(seen, "u1")
    assert m.outcome == "fallback" and not m.interrupted
    assert m.bot_text == DEFAULT_TEXT == m.played_text and m.user_text == "у меня собака"
    assert fallback_frames() in heard(sink)  # the caller heard the whole line
    assert {"type": "bot.sentence", "turn_id": "u1", "index": 0, "text": DEFAULT_TEXT} in sink.events
    assert session.turns.get("u1").state is TurnState.DONE

    # the reply turns up after all: dropped, and the deadline never fires twice
    played = len(sink.audio)
    await sentence(workers, call, "u1", 0, "Поздний ответ.")
    await workers.publish(
        subjects.llm_done(call), LlmDone(call_id=call, turn_id="u1", text="Поздний ответ.", sentences=1)
    )
    await session.keeper.check_deadlines(now_ms() + 60_000)
    await asyncio.sleep(0.2)
    assert len(sink.audio) == played and REPLY_PCM not in heard(sink)
    assert len(errors_of(seen, "u1")) == 1
    await session.end("test")


async def test_a_sentence_without_audio_mid_reply_ends_with_the_line_after_what_was_heard(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await wait_for(lambda: len(sink.audio) >= 5)
    await caller_turn(workers, call, "u1")
    await sentence(workers, call, "u1", 0, "Есть корм.", frames=5)
    await sentence(workers, call, "u1", 1, "Есть игрушки.", frames=None)  # its tts worker hung
    done = LlmDone(call_id=call, turn_id="u1", text="Есть корм. Есть игрушки.", sentences=2)
    await workers.publish(subjects.llm_done(call), done)
    await wait_for(lambda: heard(sink).count(REPLY_PCM) >= 5)  # sentence 0 was heard

    await session.keeper.check_deadlines(now_ms() + 1500)
    await wait_for(lambda: metrics_of(seen, "u1") is not None, timeout=10)
    [error] = errors_of(seen, "u1")
    assert error.stage == "tts" and "sentence 1" in error.detail
    m = metrics_of(seen, "u1")
    assert m.outcome == "fallback" and m.bot_text == f"Есть корм. {DEFAULT_TEXT}" == m.played_text
    assert fallback_frames() in heard(sink)
    # the hung worker's audio comes at last: not played
    before = len(sink.audio)
    await workers.publish(
        subjects.tts_audio(call),
        TtsAudio(call_id=call, turn_id="u1", index=1, seq=0, sample_rate=RATE, pcm=REPLY_PCM * 5, last=True),
    )
    await asyncio.sleep(0.2)
    assert len(sink.audio) == before
    await session.end("test")


async def test_the_line_is_never_said_over_the_caller(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await wait_for(lambda: len(sink.audio) >= 5)
    await caller_turn(workers, call, "u1")
    await sentence(workers, call, "u1", 0, "Есть корм.", frames=5)
    await sentence(workers, call, "u1", 1, "Есть игрушки.", frames=None)
    await wait_for(lambda: heard(sink).count(REPLY_PCM) >= 5)
    # the caller starts speaking: the robot's turn is paused, the caller's is listening
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u2", audio_offset_ms=0))
    await wait_for(lambda: session.turns.get("u1").paused_by == "u2")
    frames_before = len(sink.audio)

    await session.keeper.check_deadlines(now_ms() + 2500)
    await wait_for(lambda: metrics_of(seen, "u1") is not None)
    m = metrics_of(seen, "u1")
    assert m.outcome == "fallback" and m.bot_text == "Есть корм." and not m.interrupted
    assert len(errors_of(seen, "u1")) == 1
    await asyncio.sleep(0.2)
    assert fallback_frames()[:FRAME] not in heard(sink)[frames_before * FRAME :]
    await session.end("test")


async def test_an_llm_that_fails_before_its_first_sentence_gives_the_line_too(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await wait_for(lambda: len(sink.audio) >= 5)
    await caller_turn(workers, call, "u1")
    await wait_for(lambda: session.turns.get("u1") is not None and session.turns.get("u1").expects_reply)
    await workers.publish(
        subjects.lifecycle(call),
        StageError(call_id=call, stage="llm", kind="provider", detail="every provider failed", turn_id="u1"),
    )
    await wait_for(lambda: metrics_of(seen, "u1") is not None, timeout=10)
    assert metrics_of(seen, "u1").outcome == "fallback"
    assert fallback_frames() in heard(sink)
    assert [e.kind for e in errors_of(seen, "u1")] == ["provider"]  # the llm's own, no second one
    await session.end("test")


async def test_a_robot_says_its_own_line(broker, robot):
    own = (np.sin(np.arange(RATE // 2) / 5) * 8000).astype(np.int16)  # 500 ms
    write_wav(robot.path / "fallback.wav", own, RATE)
    (robot.path / "config.json").write_text(
        json.dumps({**json.loads((robot.path / "config.json").read_text()), "fallback_text": "Минутку."})
    )
    robot = load_robot(robot.path)
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await caller_turn(workers, call, "u1")
    await wait_for(lambda: session.turns.get("u1") is not None and session.turns.get("u1").expects_reply)
    await session.keeper.check_deadlines(now_ms() + 3500)
    await wait_for(lambda: metrics_of(seen, "u1") is not None, timeout=10)
    assert metrics_of(seen, "u1").bot_text == "Минутку."
    assert own.astype("<i2").tobytes()[: 10 * FRAME] in heard(sink)
    await session.end("test")


async def test_deadlines_switched_off_leave_the_reply_waiting(broker, robot):
    config = json.loads((robot.path / "config.json").read_text())
    config["deadlines"]["enabled"] = False
    (robot.path / "config.json").write_text(json.dumps(config))
    robot = load_robot(robot.path)
    session, _sink, workers, seen = await start_call(broker, robot)
    await caller_turn(workers, session.call_id, "u1")
    await wait_for(lambda: session.turns.get("u1") is not None and session.turns.get("u1").expects_reply)
    await session.keeper.check_deadlines(now_ms() + 600_000)
    await asyncio.sleep(0.1)
    assert not errors_of(seen, "u1") and session.turns.get("u1").state is TurnState.THINKING
    await session.end("test")
