"""Robot speech on the phone as FreeSWITCH plays it: gapless files, and the session's idea of what
the caller heard taken from PLAYBACK_START/STOP, so a barge-in records the words really heard.

The peer plays files on a timeline like a real FreeSWITCH (``uuid_broadcast``: 100 ms of lead
frames before each file; ``sendmsg`` + ``playback``: 1-2 ms apart), so the gaps below are the
gateway's doing, not the machine's load.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
from prometheus_client import REGISTRY

from tests.gateway_fs.conftest import RATE, Stack, robot_quiet
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.gateway.greeting import greeting_pcm
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    TtsAudio,
    VadSpeechEnded,
    VadSpeechStarted,
)
from voiceplatform_devstack import PeerCall
from voiceplatform_devstack.freeswitch_player import Playback

SENTENCE_S = 1.0
WORDS = 5  # per sentence: 200 ms a word, so a few ms of event latency never moves a word boundary


def sentence_pcm(i: int, seconds: float = SENTENCE_S) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * (300 + 100 * i) * t) * 4000).astype("<i2").tobytes()


def sentence_text(i: int) -> str:
    return " ".join(f"s{i}w{k}" for k in range(WORDS))


def gaps(plays: list[Playback]) -> list[float]:
    return [(b.started_at or 0) - (a.stopped_at or 0) for a, b in itertools.pairwise(plays)]


async def reply(
    stack: Stack,
    call_id: str,
    turn: str,
    sentences: int,
    seconds: float = SENTENCE_S,
    *,
    hangup: bool = False,
) -> None:
    """The workers' answer to one caller utterance: ``sentences`` sentences of ``seconds`` each."""
    w = stack.workers
    await w.publish(subjects.vad(call_id), VadSpeechStarted(call_id=call_id, turn_id=turn, audio_offset_ms=0))
    await w.publish(
        subjects.vad(call_id), VadSpeechEnded(call_id=call_id, turn_id=turn, audio_offset_ms=0, speech_ms=600)
    )
    await w.publish(subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id=turn, text="расскажите"))
    for i in range(sentences):
        text = sentence_text(i)
        sentence = LlmSentence(
            call_id=call_id, turn_id=turn, index=i, text=text, robot="bot", sample_rate=RATE
        )
        await w.publish(subjects.llm_sentence(call_id), sentence)
        audio = TtsAudio(
            call_id=call_id,
            turn_id=turn,
            index=i,
            seq=0,
            sample_rate=RATE,
            pcm=sentence_pcm(i, seconds),
            last=True,
            text=text,
        )
        await w.publish(subjects.tts_audio(call_id), audio)
    full = " ".join(sentence_text(i) for i in range(sentences))
    await w.publish(
        subjects.llm_done(call_id),
        LlmDone(call_id=call_id, turn_id=turn, text=full, sentences=sentences, hangup=hangup),
    )


def heard_text(heard_bytes: int, seconds: float = SENTENCE_S) -> str:
    """The session's rule (whole sentences, then the spoken share of the current one by words)."""
    per = int(RATE * seconds) * 2
    whole, part = divmod(heard_bytes, per)
    parts = [sentence_text(i) for i in range(whole)]
    spoken = int(WORDS * part / per)
    if spoken:
        parts.append(" ".join(sentence_text(whole).split()[:spoken]) + "…")
    return " ".join(parts)


async def barge_in_at(stack: Stack, call: PeerCall, call_id: str, first: int, after_s: float) -> None:
    """The caller starts speaking ``after_s`` into the robot's reply (from its first file's start)."""
    await wait_for(lambda: len(call.plays) > first and call.plays[first].started_at, timeout=5)
    started = call.plays[first].started_at or 0.0
    await asyncio.sleep(max(0.0, started + after_s - time.monotonic()))
    await stack.workers.publish(
        subjects.vad(call_id), VadSpeechStarted(call_id=call_id, turn_id="u2", audio_offset_ms=0)
    )


async def test_segments_play_back_to_back_in_real_time(stack: Stack) -> None:
    call = await stack.call("7002")  # a 3 s greeting: 8 segments
    await robot_quiet(stack, call, timeout=8)
    greeting = greeting_pcm(stack.service.router.registry.get("long"), RATE)
    assert greeting is not None
    assert call.heard() == greeting  # every byte, in order
    plays = call.plays
    assert len(plays) >= 5 and all(p.status == "done" and p.via == "execute" for p in plays)
    between = gaps(plays)
    print(f"gaps between segments: max {max(between) * 1000:.2f} ms over {len(between)}")
    assert max(between) < 0.005, between  # the caller hears one continuous voice
    took = (plays[-1].stopped_at or 0) - (plays[0].started_at or 0)
    assert took < len(greeting) / 2 / RATE * 1.02, took  # real time (the broadcast path ran 25 % long)
    await call.hangup()


async def test_barge_in_records_the_words_the_caller_heard(stack: Stack) -> None:
    call = await stack.call("7000")
    call_id = f"phone-{call.uuid}"
    await robot_quiet(stack, call)
    first = len(call.plays)
    await reply(stack, call_id, "u1", sentences=4)
    await barge_in_at(stack, call, call_id, first, after_s=1.5)  # mid-word 2 of sentence 1
    await wait_for(lambda: stack.of(ControlInterrupt, call_id), timeout=5)
    cut = stack.of(ControlInterrupt, call_id)[0]
    assert cut.turn_id == "u1" and cut.reason == "barge_in"
    await wait_for(lambda: all(p.stopped_at or p.status in ("flushed", "notfound") for p in call.plays))
    heard = sum(len(p.pcm) for p in call.plays[first:])  # what the peer really played of the reply
    heard_ms = heard / 2 / RATE * 1000
    print(f"peer played {heard_ms:.0f} ms of the reply; the session recorded {cut.played_ms} ms")
    assert abs(cut.played_ms - heard_ms) < 60, (cut.played_ms, heard_ms)
    assert cut.played_text == heard_text(heard) == "s0w0 s0w1 s0w2 s0w3 s0w4 s1w0 s1w1…"
    await call.hangup()


async def test_speech_while_the_last_audio_still_plays_is_a_barge_in(stack: Stack) -> None:
    call = await stack.call("7000")
    call_id = f"phone-{call.uuid}"
    await robot_quiet(stack, call)
    first = len(call.plays)
    # 1.5 s of reply: the session has sent it all ~0.5 s before the caller has heard it all
    await reply(stack, call_id, "u1", sentences=1, seconds=1.5)
    await barge_in_at(stack, call, call_id, first, after_s=1.3)
    await wait_for(lambda: stack.of(ControlInterrupt, call_id), timeout=5)
    cut = stack.of(ControlInterrupt, call_id)[0]
    assert cut.turn_id == "u1" and 1100 < cut.played_ms < 1500, cut.played_ms
    await wait_for(lambda: all(p.stopped_at or p.status in ("flushed", "notfound") for p in call.plays))
    assert sum(len(p.pcm) for p in call.plays[first:]) < int(1.5 * RATE) * 2  # the break cut it short
    await call.hangup()


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_a_file_that_fails_to_play_does_not_stall_the_hangup(stack: Stack) -> None:
    call = await stack.call("7000")
    call_id = f"phone-{call.uuid}"
    await robot_quiet(stack, call)
    timeouts = counter("vp_gateway_fs_drain_timeouts_total")
    not_played = counter("vp_gateway_fs_playback_lost_total", {"reason": "not_played"})
    call.player.fail_open = lambda path: True  # every goodbye file: no PLAYBACK_START, no STOP
    await reply(stack, call_id, "u1", sentences=1, seconds=0.6, hangup=True)  # a goodbye
    await asyncio.wait_for(call.ended.wait(), 10)
    assert call.hangup_cause == "NORMAL_CLEARING"
    await wait_for(lambda: stack.of(CallEnded, call_id))
    assert counter("vp_gateway_fs_drain_timeouts_total") == timeouts  # ended by the event, not a timeout
    assert counter("vp_gateway_fs_playback_lost_total", {"reason": "not_played"}) > not_played


async def test_a_caller_hanging_up_mid_reply_is_recorded_with_what_was_heard(stack: Stack) -> None:
    call = await stack.call("7000")
    call_id = f"phone-{call.uuid}"
    await robot_quiet(stack, call)
    first = len(call.plays)
    await reply(stack, call_id, "u1", sentences=1, seconds=1.5)  # all sent ~0.5 s before it is heard
    await wait_for(lambda: len(call.plays) > first and call.plays[first].started_at, timeout=5)
    started = call.plays[first].started_at or 0.0
    await asyncio.sleep(max(0.0, started + 1.2 - time.monotonic()))
    await call.hangup()
    await wait_for(lambda: stack.of(CallEnded, call_id), timeout=5)
    cut = [m for m in stack.of(ControlInterrupt, call_id) if m.turn_id == "u1"]
    assert cut and cut[0].reason == "call_ended", "the reply was recorded as heard in full"
    heard_ms = sum(len(p.pcm) for p in call.plays[first:]) / 2 / RATE * 1000
    assert abs(cut[0].played_ms - heard_ms) < 60, (cut[0].played_ms, heard_ms)
