"""ASR benchmark: whisper-base (int8, 2 threads) on Festival Russian utterances at 16 kHz and 8 kHz.

Reports model load time, per-utterance latency p50/p95/p99 and real-time factor through the provider,
the service latency (vad.speech_ended → asr.final on the in-memory bus), and peak RSS.

    .venv/bin/python bench/bench_asr.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.asr.caller import FakeCaller  # noqa: E402
from tests.audio_fixtures import utterance  # noqa: E402
from voiceplatform.audio import array_to_pcm  # noqa: E402
from voiceplatform.bus.memory import MemoryBroker  # noqa: E402
from voiceplatform.config import AsrConfig  # noqa: E402
from voiceplatform.logging import configure_logging  # noqa: E402
from vp_asr.app import AsrService  # noqa: E402
from vp_asr.providers import whisper_model  # noqa: E402
from vp_asr.providers.whisper import WhisperAsr  # noqa: E402
from vp_asr.settings import AsrSettings  # noqa: E402

UTTERANCES = [
    "Здравствуйте, у меня есть собака, что вы можете предложить?",
    "Сколько это стоит? У меня есть пятьсот рублей.",
    "У меня двое детей, им пять и семь лет.",
    "Добрый день! Как ваши дела?",
    "Я хочу записаться на приём в четверг.",
    "Спасибо, до свидания.",
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def summary(latencies_ms: list[float], rtfs: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50)),
        "p95_ms": round(percentile(latencies_ms, 95)),
        "p99_ms": round(percentile(latencies_ms, 99)),
        "rtf_mean": round(float(np.mean(rtfs)), 3) if rtfs else 0.0,
        "rtf_p95": round(percentile(rtfs, 95), 3),
    }


async def _once(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


async def bench_provider(rate: int, repeats: int) -> tuple[dict[str, float], list[str]]:
    provider = WhisperAsr(AsrConfig())
    latencies, rtfs, texts = [], [], []
    for rep in range(repeats):
        for text in UTTERANCES:
            samples = utterance(text, rate)
            started = time.monotonic()
            out = [t async for t in provider.stream_recognize(_once(array_to_pcm(samples)), rate, "ru-RU")]
            elapsed_ms = (time.monotonic() - started) * 1000
            latencies.append(elapsed_ms)
            rtfs.append(elapsed_ms / (len(samples) * 1000 / rate))
            if rep == 0:
                texts.append(out[0].text if out else "")
    return summary(latencies, rtfs), texts


async def bench_service(rate: int, repeats: int, robots_dir: Path) -> dict[str, float]:
    """speech_ended published → asr.final received, through the ASR service on the in-memory bus."""
    broker = MemoryBroker()
    service = AsrService(AsrSettings(robots_dir=robots_dir, instance_id="bench"))
    await service.start(broker.bus("asr"))
    caller = FakeCaller(broker.bus("gateway"), sample_rate=rate)
    await caller.assign()
    latencies, rtfs = [], []
    try:
        for rep in range(repeats):
            for i, text in enumerate(UTTERANCES):
                samples = utterance(text, rate)
                await caller.say(f"bench-{rep}-{i}", samples)
                sent = time.monotonic()
                final = await caller.next_final(wait_s=60)
                elapsed_ms = (time.monotonic() - sent) * 1000
                latencies.append(elapsed_ms)
                rtfs.append(elapsed_ms / max(final.audio_ms, 1))
    finally:
        await service.drain(10)
    return summary(latencies, rtfs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    configure_logging("bench", "WARNING", json=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        whisper_model.ensure_model_dir(Path(tmp) / "whisper-base")
        assembly_s = time.monotonic() - started

    for text in UTTERANCES:  # synthesize first: Festival time is not ASR time
        utterance(text)
    audio_s = sum(len(utterance(t)) for t in UTTERANCES) / 16000

    started = time.monotonic()
    await asyncio.to_thread(WhisperAsr.preload)
    load_s = time.monotonic() - started

    results: dict[str, object] = {
        "cold_assembly_s": round(assembly_s, 2),
        "model_load_s": round(load_s, 2),
        "utterances": len(UTTERANCES),
        "audio_s_per_pass": round(audio_s, 1),
    }
    transcripts: dict[str, list[str]] = {}
    for rate in (16000, 8000):
        results[f"provider_{rate // 1000}k"], transcripts[f"{rate // 1000}k"] = await bench_provider(
            rate, args.repeats
        )
    with tempfile.TemporaryDirectory() as tmp:
        robot = Path(tmp) / "testbot"
        robot.mkdir()
        (robot / "config.json").write_text(
            json.dumps({"mode": "pipeline", "llm": {"provider": "openai"}, "asr": {"provider": "whisper"}})
        )
        for rate in (16000, 8000):
            results[f"service_{rate // 1000}k"] = await bench_service(rate, 1, Path(tmp))
    results["model_loads"] = whisper_model.model_load_count()
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    print(json.dumps(results, indent=2, ensure_ascii=False))
    for rate_key, texts in transcripts.items():
        print(f"\ntranscripts {rate_key}:")
        for ref, hyp in zip(UTTERANCES, texts, strict=True):
            print(f"  {ref}  →  {hyp}")
    if args.json:
        args.json.write_text(
            json.dumps({**results, "transcripts": transcripts}, ensure_ascii=False, indent=2)
        )


if __name__ == "__main__":
    asyncio.run(main())
