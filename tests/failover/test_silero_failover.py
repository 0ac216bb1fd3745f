"""Failover of a Silero VAD owner in the middle of real speech (Festival), real processes and NATS:
the utterance keeps its turn and the new owner ends it where an undisturbed VAD does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.audio_fixtures import festival_available, festival_wav
from tests.failover.stack import (
    SILERO_ROBOT,
    Gateway,
    Workers,
    caller_turns,
    wait_until,
    watch_heartbeats,
    write_robot,
)
from voiceplatform import subjects
from voiceplatform.audio import array_to_pcm, frames, read_wav
from voiceplatform.bus import Envelope
from voiceplatform.gateway.session import CallSession
from voiceplatform.wire import AsrFinal

pytestmark = pytest.mark.slow
TEXT = "Здравствуйте, у меня есть собака, и она очень любит гулять в парке"


async def call_once(gateway: Gateway, robots: Path, pcm: list[bytes], fault) -> tuple[CallSession, AsrFinal]:  # type: ignore[no-untyped-def]
    session = await gateway.call(robots, SILERO_ROBOT)
    await wait_until(lambda: {"vad", "asr"} <= set(session.owners), 20, "owners")
    finals: list[AsrFinal] = []

    async def on_final(env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, AsrFinal) and msg.epoch == session.epochs.current["asr"]:
            finals.append(msg)

    await gateway.bus.subscribe(subjects.asr(session.call_id), on_final)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, frame in enumerate(pcm):
        await session.push_audio(frame)
        if i == len(pcm) // 2:
            assert len(caller_turns(session)) == 1, "speech had started"
            fault(session)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
    await wait_until(lambda: finals, 20, "the final")
    await asyncio.sleep(0.3)
    return session, finals[0]


async def test_silero_owner_killed_mid_speech(tmp_path: Path, private_nats: str) -> None:
    if not festival_available():
        pytest.skip("festival (text2wave) is not installed")
    samples, rate = read_wav(festival_wav(TEXT, tmp_path / "speech.wav"))
    assert rate == 16000
    silence = np.zeros(rate // 2, dtype=np.int16)
    pcm = [
        array_to_pcm(f)
        for f in frames(np.concatenate([silence, samples, silence, silence, silence]), rate // 50)
    ]
    robots = tmp_path / "robots"
    write_robot(robots, SILERO_ROBOT, "silero")
    workers = Workers(private_nats, robots, tmp_path)
    for instance in ("svad-a", "svad-b"):
        workers.start("vad", instance, VP_PRELOAD_SILERO="true")
    for instance in ("sasr-a", "sasr-b"):
        workers.start("asr", instance)
    gateway = await Gateway.connect(private_nats)
    try:
        beats = await watch_heartbeats(gateway.bus)
        await wait_until(lambda: beats.alive(["svad-a", "svad-b", "sasr-a", "sasr-b"]), 60, "workers")
        calm, calm_final = await call_once(gateway, robots, pcm, lambda s: None)
        await calm.end("test")
        killed, final = await call_once(gateway, robots, pcm, lambda s: workers.kill(s.owners["vad"]))
        (turn,) = caller_turns(killed)
        assert final.turn_id == turn.turn_id  # the turn the first owner started
        assert [t.turn_id for t in caller_turns(calm)] == [calm_final.turn_id]
        # the new owner ended it where an undisturbed Silero does (its model state rebuilt by the
        # replay): the same audio went to the ASR, give or take a window
        assert abs(final.audio_ms - calm_final.audio_ms) <= 100, (final.audio_ms, calm_final.audio_ms)
        await killed.end("test")
    finally:
        workers.stop_all()
        await gateway.close()
