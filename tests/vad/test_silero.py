"""Silero (ONNX, no torch) on real Russian speech synthesized in the test, at 16 kHz and 8 kHz."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.vad.helpers import (
    Pcm,
    chunks,
    collect,
    make_robot,
    silence,
    stream,
    synthesize_russian,
    white_noise,
)
from voiceplatform import subjects
from voiceplatform.audio import frames, resample, rms
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import VadConfig
from voiceplatform.wire import AssignReply, AssignRequest, VadSpeechEnded, VadSpeechStarted
from vp_vad.app import VadService
from vp_vad.providers import build_model, hysteresis
from vp_vad.segmenter import FrameScorer, Segmenter, SegmentEvent, SpeechEnd, SpeechStart
from vp_vad.settings import VadSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("silero_vad") is None, reason="silero-vad wheel not installed"
    ),
]

PHRASE = "Здравствуйте, у меня есть собака, что вы можете предложить?"
LEAD_MS, TAIL_MS = 1000, 1500


@pytest.fixture(scope="module")
def speech_16k() -> tuple[Pcm, int, int]:
    """The phrase padded with silence, and its true bounds (first/last loud 20 ms frame) in ms."""
    made = synthesize_russian(PHRASE)
    if made is None:
        pytest.skip("neither festival nor espeak-ng is installed")
    samples, rate = made
    loud = [i for i, f in enumerate(frames(samples, rate // 50)) if rms(f) > 300]
    assert loud, "synthesized speech is silent"
    padded = np.concatenate([silence(rate, LEAD_MS), samples, silence(rate, TAIL_MS)])
    return padded, LEAD_MS + loud[0] * 20, LEAD_MS + (loud[-1] + 1) * 20


async def run_silero(samples: Pcm, rate: int) -> list[SegmentEvent]:
    cfg = VadConfig(provider="silero")
    scorer = FrameScorer(await build_model(cfg), rate)
    seg = Segmenter(cfg.min_speech_frames, cfg.silence_frames, *hysteresis(cfg))
    events: list[SegmentEvent] = []
    for seq, frame in enumerate(frames(samples, rate // 50)):
        events += seg.push(seq, scorer.score(frame))
    return events


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_one_segment_with_plausible_bounds(speech_16k: tuple[Pcm, int, int], rate: int) -> None:
    samples, true_start, true_end = speech_16k
    events = await run_silero(resample(samples, 16000, rate), rate)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd], events
    start, end = events
    assert isinstance(end, SpeechEnd)
    # onset: not before the speech, and confirmed within 300 ms; end: the model's hang-over is ~100 ms
    assert true_start - 60 <= start.offset_ms <= true_start + 300
    assert true_end - 150 <= end.offset_ms <= true_end + 400
    assert end.start_ms == start.offset_ms


@pytest.mark.parametrize("rate", [16000, 8000])
async def test_no_false_positives_on_silence_and_noise(rate: int) -> None:
    quiet = np.concatenate(
        [silence(rate, 2000), white_noise(rate, 3000, std=330), white_noise(rate, 2000, std=1500, seed=3)]
    )
    assert await run_silero(quiet, rate) == []


async def test_calls_share_one_session_but_not_state(speech_16k: tuple[Pcm, int, int]) -> None:
    samples = speech_16k[0]
    noise = white_noise(16000, samples.size * 1000 // 16000, std=500)
    cfg = VadConfig(provider="silero")
    a, b = await build_model(cfg), await build_model(cfg)
    assert a._session is b._session  # type: ignore[attr-defined]
    alone = [a.speech_probability(w, 16000) for w in frames(samples, 512)[:-1]]
    a.reset()
    interleaved = []
    for w_speech, w_noise in zip(frames(samples, 512)[:-1], frames(noise, 512), strict=False):
        interleaved.append(a.speech_probability(w_speech, 16000))
        b.speech_probability(w_noise, 16000)
    assert max(alone) > 0.9
    np.testing.assert_allclose(interleaved, alone, atol=1e-6)


async def test_service_with_silero_robot_at_8k(
    broker: MemoryBroker, tmp_path: Path, speech_16k: tuple[Pcm, int, int]
) -> None:
    robots = tmp_path
    make_robot(robots, "silero_bot", {"provider": "silero", "threshold": 0.5})
    service = VadService(VadSettings(robots_dir=robots, instance_id="vad-silero"))
    await service.start(broker.bus("vad"))
    try:
        client = broker.bus("test")
        events = await collect(client, subjects.vad("call-s8"))
        reply = await client.request(
            subjects.assign("vad"),
            AssignRequest(call_id="call-s8", role="vad", robot="silero_bot", sample_rate=8000),
        )
        assert isinstance(reply, AssignReply) and reply.accepted, reply
        samples, true_start, true_end = speech_16k
        await stream(client, chunks("call-s8", resample(samples, 16000, 8000), 8000))
        await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)
        (started,) = events.of(VadSpeechStarted)
        (ended,) = events.of(VadSpeechEnded)
        assert started.turn_id == ended.turn_id
        assert true_start - 60 <= started.audio_offset_ms <= true_start + 300
        assert true_end - 150 <= ended.audio_offset_ms <= true_end + 400
    finally:
        await service.drain(1.0)
