"""The real engines: Festival (warm process pool) and espeak-ng."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator

import numpy as np
import pytest

from voiceplatform.audio import pcm_to_array, rms
from voiceplatform.providers import ProviderError, ProviderTimeoutError
from vp_tts.providers.espeak import EspeakTts
from vp_tts.providers.festival import FestivalTts
from vp_tts.settings import TtsSettings

SENTENCE = "Здравствуйте! Сколько стоит доставка в Москву?"


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


def assert_speech(pcm: bytes, rate: int, min_s: float) -> None:
    samples = pcm_to_array(pcm)
    assert samples.size / rate >= min_s
    assert rms(samples) > 300  # speech, not silence
    # voiced speech: a good share of 20 ms frames carry energy, and not all of them (pauses)
    frames = samples[: samples.size // (rate // 50) * (rate // 50)].reshape(-1, rate // 50)
    active = np.mean([rms(f) > 200 for f in frames])
    assert 0.3 < active < 0.98


@pytest.fixture
async def festival(settings: TtsSettings) -> AsyncIterator[FestivalTts]:
    provider = FestivalTts(settings)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.mark.slow
async def test_festival_speaks_russian_at_16k_in_short_chunks(festival: FestivalTts) -> None:
    assert festival.ready() and festival.sample_rate == 16000
    proc = festival.pool.processes[0]
    assert "msu_ru_nsh_clunits" in proc.voices
    chunks = await collect(festival.stream_synthesize(SENTENCE, "msu_ru_nsh"))
    assert len(chunks) > 5
    assert all(len(c) <= 16000 * 2 // 10 for c in chunks)  # ≤ 100 ms each
    assert_speech(b"".join(chunks), 16000, min_s=1.5)


@pytest.mark.slow
async def test_festival_survives_hostile_text(festival: FestivalTts) -> None:
    hostile = [
        'Он сказал: "привет" и ушёл.',
        'Путь C:\\Users\\test\\ и \\" ещё',
        "(скобки) ((двойные)) ) ( ; ' \" ` ~",
        "Счёт 10:30, 3,5 %, №7, $100, 2024-го, iPhone 15 Pro, e-mail test@mail.ru",
        '"))) (quit) (system "rm -rf /") ;; комментарий',
        "Ωmega 漢字 emoji 😀 і ї є ß é",
    ]
    for text in hostile:
        pcm = b"".join(await collect(festival.stream_synthesize(text, "")))
        assert len(pcm) > 16000, text  # more than half a second of audio
    # random junk: never an error, and the process still answers afterwards
    rnd = random.Random(7)
    alphabet = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяABCxyz0123456789 .,!?:;-—…«»\"'()[]{}<>/\\|@#$%^&*_+=~`№😀"
    for _ in range(40):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 30)))
        await collect(festival.stream_synthesize(text, ""))
    # the Scheme quoting itself, without the sanitizer: an injection attempt stays a string
    samples, rate = await festival.pool.synthesize('Он сказал "да" и ушёл', "")
    assert rate == 16000 and samples.size > 16000
    with contextlib.suppress(ProviderError):  # the lone backslash token is not speakable: an error
        await festival.pool.synthesize('слово \\ ") (quit) (print "x', "")
    assert_speech(b"".join(await collect(festival.stream_synthesize(SENTENCE, ""))), 16000, 1.5)
    assert festival.pool.processes[0].restarts == 0  # nothing above quit or broke the process


@pytest.mark.slow
async def test_festival_restarts_a_killed_process(festival: FestivalTts) -> None:
    proc = festival.pool.processes[0]
    old_pid = proc.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    pcm = b"".join(await collect(festival.stream_synthesize(SENTENCE, "")))
    assert_speech(pcm, 16000, 1.5)
    assert proc.pid != old_pid and proc.restarts == 1


@pytest.mark.slow
async def test_festival_hung_process_times_out_then_recovers(settings: TtsSettings) -> None:
    # long enough for a restarted festival to answer on a busy machine; the stopped one never does
    provider = FestivalTts(settings.model_copy(update={"festival_timeout_s": 5.0}))
    await provider.start()
    try:
        proc = provider.pool.processes[0]
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGSTOP)  # alive but never answers
        with pytest.raises(ProviderTimeoutError):
            await collect(provider.stream_synthesize(SENTENCE, ""))
        pcm = b"".join(await collect(provider.stream_synthesize(SENTENCE, "")))
        assert_speech(pcm, 16000, 1.5)
        assert proc.restarts == 1
    finally:
        await provider.aclose()


@pytest.mark.slow
async def test_festival_pool_serves_concurrent_sentences_without_mixing(settings: TtsSettings) -> None:
    provider = FestivalTts(settings.model_copy(update={"festival_procs": 2}))
    await provider.start()
    try:
        texts = ["Один.", "Это предложение заметно длиннее остальных, в нём много слов.", "Два три."] * 2
        results = await asyncio.gather(*(collect(provider.stream_synthesize(t, "")) for t in texts))
        alone = [b"".join(await collect(provider.stream_synthesize(t, ""))) for t in texts[:3]]
        # festival is deterministic: each concurrent result is exactly its sentence, never another's
        for text_index, chunks in enumerate(results):
            assert b"".join(chunks) == alone[text_index % 3]
        assert all(p.alive for p in provider.pool.processes)
    finally:
        await provider.aclose()


async def test_festival_bad_voice_fails_with_provider_error(settings: TtsSettings) -> None:
    provider = FestivalTts(settings.model_copy(update={"festival_voice": "voice_no_such_voice"}))
    try:
        with pytest.raises(ProviderError):
            await provider.start()
        assert not provider.ready()
        with pytest.raises(ProviderError):
            await collect(provider.stream_synthesize(SENTENCE, ""))
    finally:
        await provider.aclose()


async def test_espeak_speaks_russian(settings: TtsSettings) -> None:
    provider = EspeakTts(settings)
    chunks = await collect(provider.stream_synthesize(SENTENCE, "msu_ru_nsh"))
    assert provider.sample_rate == 22050
    assert all(len(c) % 2 == 0 and len(c) <= 22050 * 2 // 10 for c in chunks)
    assert_speech(b"".join(chunks), 22050, min_s=1.5)


async def test_espeak_takes_text_that_looks_like_options(settings: TtsSettings) -> None:
    provider = EspeakTts(settings)
    pcm = b"".join(await collect(provider.stream_synthesize('--help -v en "кавычки" \\ (скобки)', "")))
    assert len(pcm) > 22050  # spoken, not parsed as options


async def test_espeak_close_mid_stream_kills_the_process(settings: TtsSettings) -> None:
    provider = EspeakTts(settings)
    stream = provider.stream_synthesize("Очень длинный текст. " * 50, "")
    assert await anext(stream)
    await stream.aclose()  # must not hang or leak
