"""Round trip: RHVoice speaks Russian sentences with prices and dates, the project's Whisper-base
transcribes them (web 16 kHz and phone 8 kHz), and most words come back."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from tests.tts.rhvoice_fixtures import require_engine
from voiceplatform.resampling import StreamResampler
from vp_asr.providers.whisper import WhisperAsr
from vp_tts.providers.rhvoice import RhvoiceTts
from vp_tts.settings import TtsSettings
from vp_tts.verbalize import verbalize

SENTENCES = [
    "Стоимость доставки — 500 ₽.",
    "Ваш заказ на сумму 1 200 рублей будет готов 06.12.2026.",
    "Скидка на корм для кошек составит 10%, а абонемент стоит 2 500 рублей.",
]
_WORD = re.compile(r"[а-яё]+")
# whisper writes numbers as digits ("1,200", "10%", "6 декабря 2026 года"): compare in words
_THOUSANDS = re.compile(r"(?<=\d)[ ,.\u00a0](?=\d{3}(?!\d))")


def spoken_words(text: str) -> Counter[str]:
    return Counter(w.replace("ё", "е") for w in _WORD.findall(verbalize(_THOUSANDS.sub("", text)).lower()))


async def transcribe(asr: WhisperAsr, pcm: bytes, rate: int) -> str:
    async def audio() -> AsyncIterator[bytes]:
        yield pcm

    return " ".join([t.text async for t in asr.stream_recognize(audio(), rate, "ru-RU")])


@pytest.mark.slow
@pytest.mark.parametrize("rate", [16000, 8000])
async def test_whisper_hears_most_words_of_rhvoice_speech(settings: TtsSettings, rate: int) -> None:
    require_engine(settings)
    tts = RhvoiceTts(settings)
    await asyncio.to_thread(WhisperAsr.preload)
    asr = WhisperAsr()
    found = expected = 0
    for text in SENTENCES:
        pcm = b"".join([c async for c in tts.stream_synthesize(text, "")])
        resampler = StreamResampler(tts.sample_rate, rate)  # as the service sends it to a call
        heard = await transcribe(asr, resampler.feed(pcm) + resampler.flush(), rate)
        reference, hypothesis = spoken_words(text), spoken_words(heard)
        found += sum((reference & hypothesis).values())
        expected += sum(reference.values())
    # measured here: 36/36 words at 16 kHz, 35/36 at 8 kHz
    assert found / expected >= 0.8, f"{found}/{expected} words heard"
