"""The whisper provider: decoding options, hallucination guard, cancellation, real Russian speech."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import REGISTRY

from voiceplatform.audio import Int16Array, array_to_pcm, resample
from voiceplatform.config import AsrConfig
from voiceplatform.providers import Transcript
from vp_asr.providers.whisper import WhisperAsr, is_repeat_loop, whisper_language


@dataclass
class _Segment:
    text: str
    compression_ratio: float = 1.2
    no_speech_prob: float = 0.01


class ScriptedModel:
    """Stands in for faster-whisper's WhisperModel (third-party): records options, returns set text."""

    def __init__(self, segments: list[_Segment], gate: threading.Event | None = None) -> None:
        self.segments = segments
        self.gate = gate
        self.calls: list[dict[str, Any]] = []
        self.audio_len: list[int] = []
        self.entered = threading.Event()

    def transcribe(self, audio: Any, **options: Any) -> tuple[Iterator[_Segment], None]:
        self.calls.append(options)
        self.audio_len.append(len(audio))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        return iter(self.segments), None


async def _once(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


async def _run(provider: WhisperAsr, pcm: bytes, rate: int, language: str = "ru-RU") -> list[Transcript]:
    return [t async for t in provider.stream_recognize(_once(pcm), rate, language)]


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_language_and_repeat_loop_helpers() -> None:
    assert whisper_language("ru-RU") == "ru"
    assert whisper_language("en_US") == "en"
    assert is_repeat_loop("а не гиги " * 40)
    assert is_repeat_loop("да " * 10)
    assert not is_repeat_loop("да да да, конечно")
    assert not is_repeat_loop("Здравствуйте, у меня есть собака, что вы можете предложить?")


async def test_decoding_options_follow_the_robot_config() -> None:
    model = ScriptedModel([_Segment(" Привет. "), _Segment("Как дела?")])
    provider = WhisperAsr(AsrConfig(beam_size=3, max_new_tokens=50), model=model)
    out = await _run(provider, b"\x00\x00" * 8000, 8000)
    assert out == [Transcript(text="Привет. Как дела?", is_final=True, language="ru")]
    options = model.calls[0]
    assert options["temperature"] == 0.0
    assert options["beam_size"] == 3
    assert options["max_new_tokens"] == 50
    assert options["language"] == "ru"
    assert options["condition_on_previous_text"] is False
    assert options["vad_filter"] is False
    assert options["without_timestamps"] is True
    assert options["hotwords"] is None
    assert model.audio_len == [16000], "8 kHz input is resampled to 16 kHz"


async def test_the_vocabulary_is_sent_as_hotwords_and_its_echo_over_noise_is_dropped() -> None:
    config = AsrConfig(vocabulary=["Газпромбанк", "Мир Супрем"])
    heard = ScriptedModel([_Segment("Я клиент Газпромбанка, карта Мир Супрем")])
    out = await _run(WhisperAsr(config, model=heard), b"\x00\x00" * 8000, 8000)
    assert heard.calls[0]["hotwords"] == "Газпромбанк, Мир Супрем"
    assert out[0].text == "Я клиент Газпромбанка, карта Мир Супрем"
    echo = ScriptedModel([_Segment("Газпромбанк, Мир Супрем, Газпромбанк.", no_speech_prob=0.4)])
    dropped = _metric("vp_asr_hallucinations_dropped_total", {"provider": "whisper", "reason": "prompt_echo"})
    out = await _run(WhisperAsr(config, model=echo), b"\x00\x00" * 8000, 8000)
    assert out[0].text == ""
    assert (
        _metric("vp_asr_hallucinations_dropped_total", {"provider": "whisper", "reason": "prompt_echo"})
        == dropped + 1
    )
    said = ScriptedModel([_Segment("Газпромбанк, Мир Супрем.", no_speech_prob=0.02)])
    out = await _run(WhisperAsr(config, model=said), b"\x00\x00" * 8000, 8000)
    assert out[0].text == "Газпромбанк, Мир Супрем.", "the caller said the terms: confident speech"


@pytest.mark.parametrize(
    ("segments", "reason"),
    [
        ([_Segment("ааааааааааааааааааааааааааааааа", compression_ratio=3.1)], "compression_ratio"),
        ([_Segment("а не гиги " * 12)], "repeat_loop"),
    ],
)
async def test_hallucinations_become_empty_text(segments: list[_Segment], reason: str) -> None:
    before = _metric("vp_asr_hallucinations_dropped_total", {"provider": "whisper", "reason": reason})
    provider = WhisperAsr(model=ScriptedModel(segments))
    out = await _run(provider, b"\x00\x00" * 16000, 16000)
    assert [t.text for t in out] == [""]
    after = _metric("vp_asr_hallucinations_dropped_total", {"provider": "whisper", "reason": reason})
    assert after == before + 1


async def test_cancellation_is_prompt_and_the_model_slot_is_held_until_the_thread_ends() -> None:
    gate = threading.Event()
    slow = ScriptedModel([_Segment("никогда")], gate=gate)
    provider = WhisperAsr(model=slow)
    task = asyncio.create_task(_run(provider, b"\x00\x00" * 16000, 16000))
    assert await asyncio.to_thread(slow.entered.wait, 5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.2

    # the abandoned decode still occupies the single model slot: the next one waits for it
    quick = ScriptedModel([_Segment("следующий")])
    follower = asyncio.create_task(_run(WhisperAsr(model=quick), b"\x00\x00" * 16000, 16000))
    await asyncio.sleep(0.1)
    assert not quick.calls, "a second decode must not run beside the abandoned one"
    gate.set()
    out = await asyncio.wait_for(follower, 5)
    assert out[0].text == "следующий"


@pytest.mark.slow
@pytest.mark.parametrize("rate", [16000, 8000])
async def test_recognizes_festival_russian(dog_speech: Int16Array, rate: int) -> None:
    provider = WhisperAsr(AsrConfig())
    await asyncio.to_thread(WhisperAsr.preload)
    pcm = array_to_pcm(resample(dog_speech, 16000, rate))
    out = await _run(provider, pcm, rate)
    assert len(out) == 1 and out[0].is_final
    assert "собак" in out[0].text.lower()
    assert out[0].language == "ru"
