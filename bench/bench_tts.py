"""TTS latency: time to first audio (p50/p95/p99) and real-time factor, Festival (warm) and espeak-ng.

Run: ``.venv/bin/python bench/bench_tts.py [--rounds 5] [--json]``. Ten Russian sentences from 2 to
30 words, each synthesized ``rounds`` times per engine after one warm-up utterance:
- provider rows: ``stream_synthesize`` alone, first chunk and whole sentence;
- service rows: the whole service on the in-memory bus (llm.sentence in → first tts.audio out,
  including text normalization, resampling to 8 kHz and the wire encoding).
RTF = synthesis wall time / audio duration (lower is faster; < 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.logging import configure_logging
from voiceplatform.providers import TtsProvider
from voiceplatform.wire import LlmSentence, Message, TtsAudio
from vp_tts.app import TtsService
from vp_tts.providers.espeak import EspeakTts
from vp_tts.providers.festival import FestivalTts
from vp_tts.settings import TtsSettings

SENTENCES = [
    "Да.",
    "Добрый день!",
    "Чем я могу вам помочь?",
    "Сколько это стоит? У меня есть пятьсот рублей.",
    "Доставка по Москве занимает один или два рабочих дня.",
    "Я передам вашу заявку менеджеру, и он перезвонит вам в течение часа.",
    "Скажите, пожалуйста, как к вам обращаться и по какому номеру с вами лучше связаться?",
    "У нас есть корм для собак и кошек, игрушки, лежанки, а также витамины для пожилых животных.",
    "Если вам удобно, я могу записать вас на приём к ветеринару на завтра, "
    "на десять утра или на три часа дня.",
    "Спасибо за звонок! Мы работаем ежедневно с девяти утра до девяти вечера, "
    "а заказ на сайте можно оформить круглосуточно, без выходных и перерывов.",
]


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 95, 99)}


async def bench_provider(provider: TtsProvider, rounds: int) -> dict[str, Any]:
    async def one(text: str) -> tuple[float, float, int]:
        started = time.monotonic()
        first = 0.0
        size = 0
        async for chunk in provider.stream_synthesize(text, ""):
            if not first:
                first = time.monotonic() - started
            size += len(chunk)
        return first, time.monotonic() - started, size

    await one("Прогрев.")
    firsts: list[float] = []
    rtfs: list[float] = []
    for _ in range(rounds):
        for text in SENTENCES:
            first, total, size = await one(text)
            firsts.append(first * 1000)
            rtfs.append(total / (size / 2 / provider.sample_rate))
    return {
        "first_audio_ms": percentiles(firsts),
        "rtf": {"mean": round(float(np.mean(rtfs)), 4), "max": round(float(np.max(rtfs)), 4)},
        "n": len(firsts),
    }


async def bench_service(settings: TtsSettings, robot: str, rounds: int) -> dict[str, Any]:
    broker = MemoryBroker()
    service = TtsService(settings)
    await service.start(broker.bus("tts"))
    client = broker.bus("bench")
    first_at: dict[int, float] = {}
    done: dict[int, asyncio.Event] = {}

    async def on_audio(env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, TtsAudio):
            if msg.pcm and msg.index not in first_at:
                first_at[msg.index] = time.monotonic()
            if msg.last:
                done[msg.index].set()
        return None

    await client.subscribe(subjects.tts_audio("bench"), on_audio)
    latencies: list[float] = []
    index = 0
    try:
        for round_no in range(rounds + 1):
            for text in SENTENCES:
                done[index] = asyncio.Event()
                sent = time.monotonic()
                await client.publish(
                    subjects.llm_sentence("bench"),
                    LlmSentence(
                        call_id="bench", turn_id="t", index=index, text=text, robot=robot, sample_rate=8000
                    ),
                )
                await asyncio.wait_for(done[index].wait(), 30)
                if round_no:  # round 0 warms up
                    latencies.append((first_at[index] - sent) * 1000)
                index += 1
    finally:
        await service.drain(5.0)
    return {"first_audio_ms": percentiles(latencies), "n": len(latencies)}


def write_robots(root: Path) -> None:
    for name, provider in (("bench_festival", "festival"), ("bench_espeak", "espeak")):
        folder = root / name
        folder.mkdir(parents=True)
        config = {"mode": "pipeline", "llm": {"provider": "openai"}, "tts": {"provider": provider}}
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


async def main(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        write_robots(Path(tmp))
        settings = TtsSettings(robots_dir=Path(tmp))
        festival = FestivalTts(settings)
        started = time.monotonic()
        await festival.start()
        warm_up_s = time.monotonic() - started
        try:
            results: dict[str, Any] = {"festival_start_s": round(warm_up_s, 2)}
            results["festival"] = await bench_provider(festival, rounds)
        finally:
            await festival.aclose()
        results["espeak"] = await bench_provider(EspeakTts(settings), rounds)
        results["service_festival_8k"] = await bench_service(settings, "bench_festival", rounds)
        results["service_espeak_8k"] = await bench_service(
            settings.model_copy(update={"festival_preload": False}), "bench_espeak", rounds
        )
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"festival process start (voice load): {results['festival_start_s']} s")
    print(f"{'engine':<22}{'n':>5}{'TTFA p50':>10}{'p95':>8}{'p99':>8}{'RTF mean':>10}{'RTF max':>9}")
    for key in ("festival", "espeak", "service_festival_8k", "service_espeak_8k"):
        row = results[key]
        ttfa = row["first_audio_ms"]
        rtf = row.get("rtf", {})
        print(
            f"{key:<22}{row['n']:>5}{ttfa['p50']:>9.1f}ms{ttfa['p95']:>6.1f}ms{ttfa['p99']:>6.1f}ms"
            f"{rtf.get('mean', float('nan')):>10.3f}{rtf.get('max', float('nan')):>9.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logging("bench-tts", "WARNING", json=False)
    out = asyncio.run(main(args.rounds))
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print_table(out)
