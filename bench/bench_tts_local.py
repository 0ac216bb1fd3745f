"""Local Russian voices side by side: RHVoice (Irina, Aleksandr), Festival (msu_ru_nsh), espeak-ng.

Run: ``.venv/bin/python bench/bench_tts_local.py [--rounds 3] [--voices Irina,Aleksandr] [--json]``.

- first audio p50/p95 (ms): ``stream_synthesize`` of each provider until its first chunk, warm
  (one utterance first), over ten sentences × ``rounds``;
- RTF: synthesis wall time / audio duration (lower is faster);
- RSS (MB): what the engine holds: RHVoice the growth of this process (engine, voice data),
  Festival its warm child process, espeak-ng the largest of its short-lived children;
- WER (%): the project's Whisper-base (vp_asr WhisperAsr) transcribes every sentence of
  ``WER_SENTENCES`` (numbers, prices, dates) resampled to 16 kHz (web) and 8 kHz (phone) the way the
  TTS service does; reference and transcript are both normalised to words (numbers spelled out by
  vp_tts.verbalize, punctuation and case dropped, ё → е) before the word edit distance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from voiceplatform.logging import configure_logging
from voiceplatform.resampling import StreamResampler
from vp_asr.providers.whisper import WhisperAsr
from vp_tts.providers.espeak import EspeakTts
from vp_tts.providers.festival import FestivalTts
from vp_tts.providers.rhvoice import RhvoiceTts
from vp_tts.settings import TtsSettings
from vp_tts.text import normalize_text
from vp_tts.verbalize import verbalize

LATENCY_SENTENCES = [
    "Да.",
    "Добрый день!",
    "Чем я могу вам помочь?",
    "Сколько это стоит? У меня есть пятьсот рублей.",
    "Доставка по Москве занимает один или два рабочих дня.",
    "Я передам вашу заявку менеджеру, и он перезвонит вам в течение часа.",
    "Скажите, пожалуйста, как к вам обращаться и по какому номеру с вами лучше связаться?",
    "У нас есть корм для собак и кошек, игрушки, лежанки, а также витамины для пожилых животных.",
    "Если вам удобно, я могу записать вас на приём к ветеринару на завтра, на десять утра.",
    "Спасибо за звонок! Мы работаем ежедневно с девяти утра до девяти вечера, без выходных.",
]
WER_SENTENCES = [
    "Стоимость доставки — 500 ₽.",
    "Ваш заказ на сумму 1 200 рублей уже собран.",
    "Скидка на корм для кошек составит 10%.",
    "Приём у ветеринара назначен на 06.12.2026 в 10:30.",
    "Курьер привезёт заказ завтра с 9:00 до 18:00.",
    "Абонемент на месяц стоит 2 500 рублей, а на год — 24 000 рублей.",
    "«Ромашка» работает ежедневно, кроме понедельника.",
    "Позвоните нам по номеру 8 800 555 35 35.",
    "Остаток на вашем счёте — 347 рублей 50 копеек.",
    "Мы перезвоним вам в течение 15 минут.",
]
_WORD = re.compile(r"[a-zа-яё]+", re.IGNORECASE)
_DIGIT_GROUPS = re.compile(r"(?<=\d)[ ,.\u00a0](?=\d{3}(?!\d))")
_HEARD_TIME = re.compile(r"(?<![\d.,])(\d{1,2})[.-](\d{2})(?!\d)(?![.,]\d)")


def words(text: str) -> list[str]:
    """Comparable words: numbers spelled out, no punctuation or case, ё as е."""
    text = _DIGIT_GROUPS.sub("", text)  # whisper writes "1,200" / "24.000" for thousands
    text = _HEARD_TIME.sub(r"\1:\2", text)  # and "10-30" / "9.00" for times
    return [w.replace("ё", "е") for w in _WORD.findall(verbalize(text).lower())]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref != hyp))
    return row[-1]


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def synthesize(provider: Any, text: str, voice: str) -> tuple[bytes, float, float]:
    """(pcm at the provider's rate, first-audio seconds, total seconds)."""
    started = time.monotonic()
    first = 0.0
    chunks: list[bytes] = []
    async for chunk in provider.stream_synthesize(normalize_text(text), voice):
        if not chunks:
            first = time.monotonic() - started
        chunks.append(chunk)
    return b"".join(chunks), first, time.monotonic() - started


def at_rate(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    resampler = StreamResampler(from_rate, to_rate)
    return resampler.feed(pcm) + resampler.flush()


async def bench_latency(provider: Any, voice: str, rounds: int) -> dict[str, Any]:
    await synthesize(provider, "Прогрев.", voice)
    firsts: list[float] = []
    rtfs: list[float] = []
    for _ in range(rounds):
        for text in LATENCY_SENTENCES:
            pcm, first, total = await synthesize(provider, text, voice)
            firsts.append(first * 1000)
            rtfs.append(total / (len(pcm) / 2 / provider.sample_rate))
    return {
        "first_audio_ms": {f"p{q}": round(float(np.percentile(firsts, q)), 1) for q in (50, 95)},
        "rtf": round(float(np.mean(rtfs)), 4),
    }


async def transcribe(asr: WhisperAsr, pcm: bytes, rate: int) -> str:
    async def one() -> AsyncIterator[bytes]:
        yield pcm

    texts = [t.text async for t in asr.stream_recognize(one(), rate, "ru-RU")]
    return " ".join(texts)


async def bench_wer(asr: WhisperAsr, audio: dict[int, list[bytes]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for rate, clips in audio.items():
        errors = total = 0
        samples = []
        for text, pcm in zip(WER_SENTENCES, clips, strict=True):
            heard = await transcribe(asr, pcm, rate)
            ref = words(text)
            errors += word_errors(ref, words(heard))
            total += len(ref)
            samples.append(heard)
        result[f"wer_{rate // 1000}k"] = round(100 * errors / total, 1)
        result[f"heard_{rate // 1000}k"] = samples
    return result


async def run(rounds: int, voices: list[str]) -> dict[str, dict[str, Any]]:
    settings = TtsSettings(robots_dir=Path("robots"), festival_procs=1)
    results: dict[str, dict[str, Any]] = {}
    audio: dict[str, dict[int, list[bytes]]] = {}

    async def measure(label: str, provider: Any, voice: str) -> None:
        results[label] = await bench_latency(provider, voice, rounds)
        clips = [(await synthesize(provider, text, voice))[0] for text in WER_SENTENCES]
        audio[label] = {r: [at_rate(c, provider.sample_rate, r) for c in clips] for r in (16000, 8000)}

    # espeak-ng first: its children's peak RSS is read before festival's child exists
    await measure("espeak-ng", EspeakTts(settings), "")
    results["espeak-ng"]["rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)

    base = rss_mb()
    rhvoice = RhvoiceTts(settings)
    await rhvoice.start()
    for voice in voices:
        await measure(f"rhvoice {voice}", rhvoice, voice)
    grown = round(rss_mb() - base, 1)
    for voice in voices:
        results[f"rhvoice {voice}"]["rss_mb"] = grown  # one engine, all its loaded voices

    festival = FestivalTts(settings)
    await festival.start()
    try:
        await measure("festival", festival, "")
        results["festival"]["rss_mb"] = round(sum(rss_mb(p.pid) for p in festival.pool.processes if p.pid), 1)
    finally:
        await festival.aclose()

    asr = WhisperAsr()
    await asyncio.to_thread(WhisperAsr.preload)
    for label, clips in audio.items():
        results[label].update(await bench_wer(asr, clips))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--voices", default="Irina,Aleksandr", help="RHVoice voices, comma-separated")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--transcripts", action="store_true", help="print what whisper heard")
    args = parser.parse_args()
    configure_logging("bench", level="WARNING")
    results = asyncio.run(run(args.rounds, [v for v in args.voices.split(",") if v]))
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return
    widths = (20, 9, 9, 7, 7, 8, 7)
    header = ("voice", "first p50", "first p95", "RTF", "RSS MB", "WER 16k", "WER 8k")
    print(
        " ".join(
            f"{h:{w}}" if not i else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for label, r in results.items():
        fa = r["first_audio_ms"]
        print(
            f"{label:20} {fa['p50']:>9} {fa['p95']:>9} {r['rtf']:>7} {r['rss_mb']:>7} "
            f"{r['wer_16k']:>7}% {r['wer_8k']:>6}%"
        )
    if args.transcripts:
        for label, r in results.items():
            print(f"\n== {label} (16 kHz)")
            for ref, heard in zip(WER_SENTENCES, r["heard_16k"], strict=True):
                print(f"  {ref}\n   → {heard}")


if __name__ == "__main__":
    main()
