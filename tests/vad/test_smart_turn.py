"""The real end-of-turn model (Smart Turn v3.2) on speech synthesized in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.vad.helpers import Pcm, chunks, collect, make_robot, silence, stream, synthesize_russian
from voiceplatform import subjects
from voiceplatform.audio import resample
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import VadConfig
from voiceplatform.wire import AssignReply, AssignRequest, VadSpeechEnded
from voiceplatform.wire.messages import VadSpeechPaused
from vp_vad.app import VadService
from vp_vad.eot import MODEL_RATE, WINDOW_S, SmartTurn, default_model_path, window
from vp_vad.providers import build_eot_model
from vp_vad.settings import VadSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_path().is_file(), reason="run scripts/fetch_smart_turn.sh"),
]

# a question with a clear final rise
QUESTION = "Скажите, пожалуйста, сколько стоит доставка до Москвы?"


@pytest.fixture(scope="module")
def question() -> Pcm:
    made = synthesize_russian(QUESTION)
    if made is None:
        pytest.skip("neither festival nor espeak-ng is installed")
    samples, _ = made
    loud = np.nonzero(np.abs(samples) > 300)[0]
    return samples[loud[0] : loud[-1] + 1]


def with_pause(speech: Pcm, rate: int = MODEL_RATE) -> Pcm:
    """What the VAD hands the model: the speech and the 200 ms of silence that made the pause."""
    return np.concatenate([speech, silence(rate, 200)])


def test_window_is_the_last_8_s_left_padded() -> None:
    short = np.full(MODEL_RATE, 16384, dtype=np.int16)
    w = window(short, MODEL_RATE)
    assert w.shape == (WINDOW_S * MODEL_RATE,)
    assert np.all(w[:-MODEL_RATE] == 0) and np.allclose(w[-MODEL_RATE:], 0.5)
    long = np.arange(10 * MODEL_RATE, dtype=np.int64).astype(np.int16)
    assert np.array_equal(window(long, MODEL_RATE), long[-WINDOW_S * MODEL_RATE :] / 32768.0)
    assert window(short[:8000], 8000).size == WINDOW_S * MODEL_RATE  # 8 kHz is upsampled


def test_features_have_the_models_shape() -> None:
    feats = SmartTurn().features(silence(MODEL_RATE, 300), MODEL_RATE)
    assert feats.shape == (1, 80, 800) and feats.dtype == np.float32


@pytest.mark.parametrize("rate", [16000, 8000])
def test_complete_question_scores_higher_than_cut_mid_word(question: Pcm, rate: int) -> None:
    model = SmartTurn()
    audio = resample(question, MODEL_RATE, rate)
    full = model.complete_probability(with_pause(audio, rate), rate)
    # cut inside "доставка"; the model is weak on synthetic Russian elsewhere (see bench_turns.py)
    for share in (0.6, 0.65):
        p_cut = model.complete_probability(with_pause(audio[: int(audio.size * share)], rate), rate)
        # the margin depends on the CPU's onnxruntime kernels: > 0.2 on the earlier CI machine, 0.09 at
        # 16 kHz on an AVX2-only EPYC (for the code before this change too); the order does not
        assert full > 0.5 and full > p_cut, (share, full, p_cut)


async def test_robot_config_picks_the_model() -> None:
    assert await build_eot_model(VadConfig(provider="energy")) is None  # auto: not with energy
    assert await build_eot_model(VadConfig(provider="silero", eot_model="none")) is None
    assert isinstance(await build_eot_model(VadConfig(provider="silero")), SmartTurn)
    assert isinstance(await build_eot_model(VadConfig(eot_model="smart_turn")), SmartTurn)


async def test_silero_robot_runs_the_model_at_the_pause(
    broker: MemoryBroker, tmp_path: Path, question: Pcm
) -> None:
    make_robot(tmp_path, "silero_eot", {"provider": "silero"})
    service = VadService(VadSettings(robots_dir=tmp_path, instance_id="vad-eot"))
    await service.start(broker.bus("vad"))
    try:
        client = broker.bus("test")
        events = await collect(client, subjects.vad("call-eot"))
        reply = await client.request(
            subjects.assign("vad"),
            AssignRequest(call_id="call-eot", role="vad", robot="silero_eot", sample_rate=8000),
        )
        assert isinstance(reply, AssignReply) and reply.accepted, reply
        audio = resample(np.concatenate([silence(MODEL_RATE, 500), question]), MODEL_RATE, 8000)
        items = chunks("call-eot", np.concatenate([audio, silence(8000, 300)]), 8000)
        await stream(client, items)  # speech and the silence that makes the pause
        await events.wait(lambda: len(events.of(VadSpeechPaused)) == 1, within=10)
        (paused,) = events.of(VadSpeechPaused)
        assert 0.0 <= paused.eot_probability <= 1.0  # the real model answered
        tail = chunks("call-eot", silence(8000, 1500), 8000, first_seq=len(items))
        await stream(client, tail)
        await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)
        (ended,) = events.of(VadSpeechEnded)
        assert ended.audio_offset_ms == paused.audio_offset_ms
        assert ended.eot_probability == paused.eot_probability and not ended.truncated
        assert [m.type_name for m in events.messages] == [
            "vad.speech_started",
            "vad.speech_paused",
            "vad.speech_ended",
        ]
    finally:
        await service.drain(1.0)
