"""Turn-taking through the gateway's call session on the in-memory bus (the test plays the workers)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.gateway.test_call_session import FRAME, RATE, reply, start_call
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.config import load_robot
from voiceplatform.wire import (
    AsrFinal,
    CallNoInput,
    ControlInterrupt,
    ControlTransfer,
    LlmDone,
    TtsAudio,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)


@pytest.fixture
def robot(tmp_path):
    folder = tmp_path / "robots" / "bot"
    folder.mkdir(parents=True)
    config = {
        "llm": {"provider": "openai"},
        "greeting_text": "Здравствуйте!",
        "turns": {"no_input_s": 0, "backchannel_max_ms": 900, "continuation_played_ms": 300},
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_wav(folder / "greeting.wav", (np.ones(RATE // 10) * 1000).astype(np.int16), RATE)  # 100 ms
    return load_robot(folder)


def state_of(session, turn_id):
    turn = session.turns.get(turn_id)
    return turn.state if turn is not None else None


def interrupts(seen, turn_id):
    return [m for m in seen if isinstance(m, ControlInterrupt) and m.turn_id == turn_id]


async def started(workers, call, turn_id):
    await workers.publish(
        subjects.vad(call), VadSpeechStarted(call_id=call, turn_id=turn_id, audio_offset_ms=0)
    )


async def test_caller_going_on_before_the_reply_is_heard_gets_one_reply(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.2)  # the greeting is over
    await started(workers, call, "u1")
    await workers.publish(
        subjects.vad(call), VadSpeechEnded(call_id=call, turn_id="u1", audio_offset_ms=900, speech_ms=900)
    )
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u1", text="я хотел бы"))
    # the caller goes on after a pause, before the reply to the first half was heard
    await started(workers, call, "u2")
    await wait_for(lambda: interrupts(seen, "u1"))
    assert interrupts(seen, "u1")[0].reason == "continued" and interrupts(seen, "u1")[0].by_turn_id == "u2"
    # the first half's reply arrives late: never played
    await reply(workers, call, "u1", ["Ответ на половину."], chunk_frames=5)
    await reply(workers, call, "u2", ["Ответ на всё."], chunk_frames=5)
    await wait_for(lambda: any(isinstance(m, TurnMetrics) and m.turn_id == "u2" for m in seen))
    u2 = next(m for m in seen if isinstance(m, TurnMetrics) and m.turn_id == "u2")
    assert u2.outcome == "played" and not u2.interrupted and u2.bot_text == "Ответ на всё."
    # the first half is not a turn of its own on record: its words are u2's
    assert not any(isinstance(m, TurnMetrics) and m.turn_id == "u1" for m in seen)
    assert {"type": "turn.cancelled", "turn_id": "u1", "reason": "continued"} in sink.events
    starts = [e["turn_id"] for e in sink.events if e["type"] == "bot.sentence"]
    assert "u1" not in starts  # the stale reply never reached the caller
    await session.end("test")


async def test_a_new_turn_supersedes_a_pending_reply_so_replies_never_queue(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.2)
    await started(workers, call, "u1")
    await workers.publish(
        subjects.vad(call), VadSpeechEnded(call_id=call, turn_id="u1", audio_offset_ms=900, speech_ms=900)
    )
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u1", text="сколько стоит"))
    await wait_for(lambda: state_of(session, "u1") == "thinking")
    session.turns.get("u1").speech_end_ts_ms -= 10_000  # long ago: not a continuation
    await started(workers, call, "u2")
    await wait_for(lambda: interrupts(seen, "u1"))
    assert interrupts(seen, "u1")[0].reason == "superseded"
    await reply(workers, call, "u1", ["Старый ответ."], chunk_frames=5)
    await reply(workers, call, "u2", ["Новый ответ."], chunk_frames=5)
    await wait_for(lambda: any(isinstance(m, TurnMetrics) and m.turn_id == "u2" for m in seen))
    replies = [e["turn_id"] for e in sink.events if e["type"] == "bot.sentence"]
    assert replies == [session.greeting_turn, "u2"]  # the greeting's words, then u2's reply only
    await session.end("test")


async def test_backchannel_pauses_then_resumes_the_robot_and_leaves_the_dialogue(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.2)
    await started(workers, call, "u1")
    await reply(workers, call, "u1", ["Первое длинное предложение ответа."], chunk_frames=100)
    await wait_for(lambda: state_of(session, "u1") == "speaking")
    await asyncio.sleep(0.5)  # past continuation_played_ms: the robot is well under way
    await started(workers, call, "u2")
    await wait_for(lambda: any(e["type"] == "playback.paused" for e in sink.events))
    paused_at = len(sink.audio)
    await asyncio.sleep(0.1)
    assert len(sink.audio) <= paused_at + 1  # silent while paused
    await workers.publish(
        subjects.vad(call), VadSpeechEnded(call_id=call, turn_id="u2", audio_offset_ms=400, speech_ms=400)
    )
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u2", text="угу"))
    await wait_for(lambda: any(e["type"] == "playback.resumed" for e in sink.events))
    await wait_for(lambda: any(isinstance(m, TurnMetrics) and m.turn_id == "u1" for m in seen), timeout=5)
    u1 = next(m for m in seen if isinstance(m, TurnMetrics) and m.turn_id == "u1")
    assert u1.outcome == "played" and not u1.interrupted
    assert not interrupts(seen, "u1")
    assert [m.reason for m in interrupts(seen, "u2")] == ["backchannel"]
    await session.end("test")


async def test_real_words_over_the_robot_cut_it(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.2)
    await started(workers, call, "u1")
    await reply(workers, call, "u1", ["Первое длинное предложение ответа."], chunk_frames=100)
    await wait_for(lambda: state_of(session, "u1") == "speaking")
    await asyncio.sleep(0.5)
    await started(workers, call, "u2")
    await wait_for(lambda: any(e["type"] == "playback.paused" for e in sink.events))
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u2", text="нет, подождите"))
    await wait_for(lambda: interrupts(seen, "u1"))
    cut = interrupts(seen, "u1")[0]
    assert cut.reason == "barge_in" and cut.by_turn_id == "u2" and cut.played_ms > 0
    await session.end("test")


async def test_caller_who_keeps_talking_over_the_robot_cuts_it_without_waiting_for_words(broker, robot):
    session, _sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.2)
    await started(workers, call, "u1")
    await reply(workers, call, "u1", ["Первое длинное предложение ответа."], chunk_frames=150)
    await wait_for(lambda: state_of(session, "u1") == "speaking")
    await asyncio.sleep(0.5)
    await started(workers, call, "u2")
    await wait_for(lambda: interrupts(seen, "u1"), timeout=5)  # backchannel_max_ms = 0.9 s
    assert interrupts(seen, "u1")[0].reason == "barge_in"
    await session.end("test")


async def test_silence_after_the_robot_finished_asks_for_a_re_prompt(broker, robot, tmp_path):
    folder = robot.path
    cfg = json.loads((folder / "config.json").read_text())
    cfg["turns"]["no_input_s"] = 0.5
    (folder / "config.json").write_text(json.dumps(cfg))
    session, _sink, workers, seen = await start_call(broker, load_robot(folder))
    call = session.call_id
    await wait_for(lambda: any(isinstance(m, CallNoInput) for m in seen), timeout=5)
    prompt = next(m for m in seen if isinstance(m, CallNoInput))
    assert prompt.count == 1 and prompt.silence_ms >= 500
    # the brain answers the re-prompt turn like any other, and it is played
    await workers.publish(
        subjects.tts_audio(call),
        TtsAudio(
            call_id=call,
            turn_id=prompt.turn_id,
            index=0,
            seq=0,
            sample_rate=RATE,
            pcm=b"\1\0" * FRAME,
            last=True,
        ),
    )
    await workers.publish(
        subjects.llm_done(call),
        LlmDone(
            call_id=call, turn_id=prompt.turn_id, text="Вы меня слышите?", sentences=1, transfer_to="8800"
        ),
    )
    await wait_for(lambda: any(isinstance(m, TurnMetrics) and m.turn_id == prompt.turn_id for m in seen))
    await wait_for(lambda: any(isinstance(m, ControlTransfer) for m in seen))
    assert next(m for m in seen if isinstance(m, ControlTransfer)).destination == "8800"
    await session.end("test")


async def test_a_voice_streaming_in_chunks_is_paced_never_more_than_the_lead_ahead(broker, robot):
    session, sink, workers, _seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.3)  # the greeting is over
    await started(workers, call, "u1")
    await workers.publish(
        subjects.vad(call), VadSpeechEnded(call_id=call, turn_id="u1", audio_offset_ms=900, speech_ms=900)
    )
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u1", text="расскажите"))
    first = len(sink.audio)
    for seq in range(10):  # 1 s of speech in 100 ms chunks, each arriving after an underrun
        await workers.publish(
            subjects.tts_audio(call),
            TtsAudio(
                call_id=call,
                turn_id="u1",
                index=0,
                seq=seq,
                sample_rate=RATE,
                pcm=b"\1\0" * (FRAME // 2) * 5,
                last=seq == 9,
            ),
        )
        await asyncio.sleep(0.03)
    await workers.publish(subjects.llm_done(call), LlmDone(call_id=call, turn_id="u1", text="x", sentences=1))
    await wait_for(lambda: len(sink.audio) >= first + 50, timeout=5)
    times = [t for t, _ in sink.audio[first : first + 50]]
    lead = session.lead_frames
    # frame i may go out at most `lead` frames (plus scheduling slack) before its real-time slot
    early = [i for i, t in enumerate(times) if t < times[0] + (i - lead - 2) * 0.02]
    assert not early, f"frames sent ahead of real time: {early[:5]}"
    await session.end("test")


async def test_a_backchannel_whose_turn_ends_late_still_resumes_the_robot(broker, robot):
    """The VAD may hold the turn open past backchannel_max_ms (the end-of-turn hang-over): the pause
    after "ага" says the caller stopped, so the transcript decides, not the timer."""
    from voiceplatform.wire import VadSpeechPaused

    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await asyncio.sleep(0.2)
    await started(workers, call, "u1")
    await reply(workers, call, "u1", ["Первое длинное предложение ответа."], chunk_frames=150)
    await wait_for(lambda: state_of(session, "u1") == "speaking")
    await asyncio.sleep(1.2)
    await started(workers, call, "u2")
    await workers.publish(
        subjects.vad(call), VadSpeechPaused(call_id=call, turn_id="u2", audio_offset_ms=400, speech_ms=400)
    )
    await asyncio.sleep(1.2)  # past backchannel_max_ms, the turn still open
    await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id="u2", text="ага"))
    await wait_for(lambda: any(e["type"] == "playback.resumed" for e in sink.events))
    assert not interrupts(seen, "u1")
    await session.end("test")
