"""Per-frame VAD cost (energy and silero, 8 and 16 kHz) and the calls one core can sustain.

Run: ``.venv/bin/python bench/bench_vad.py [--seconds 60]``. Each 20 ms frame goes through what the
service does per frame: wire decode, frame check, scoring and segmentation (``VadSession.process``).
The audio is Russian speech from Festival (espeak-ng, else tone bursts, when it is missing) with
pauses, looped. One core = this single thread; calls/core = frames per second / 50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voiceplatform import subjects
from voiceplatform.audio import array_to_pcm, frames, read_wav, resample
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import VadConfig
from voiceplatform.logging import configure_logging
from voiceplatform.wire import AssignRequest, AudioChunk, decode, encode
from vp_vad.app import VadService
from vp_vad.providers import build_model
from vp_vad.session import VadSession
from vp_vad.settings import VadSettings

PHRASES = [
    "Здравствуйте, у меня есть собака, что вы можете предложить?",
    "Сколько это стоит? У меня есть пятьсот рублей.",
]


def speech_16k() -> tuple[npt.NDArray[np.int16], str]:
    with tempfile.TemporaryDirectory() as tmp:
        parts: list[npt.NDArray[np.int16]] = []
        for i, text in enumerate(PHRASES):
            txt, wav = Path(tmp) / f"{i}.txt", Path(tmp) / f"{i}.wav"
            txt.write_text(text, encoding="utf-8")
            if shutil.which("text2wave"):
                cmd = ["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", str(txt), "-o", str(wav)]
                source = "festival"
            elif shutil.which("espeak-ng"):
                cmd = ["espeak-ng", "-v", "ru", "-w", str(wav), text]
                source = "espeak-ng"
            else:
                break
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            samples, rate = read_wav(wav)
            parts += [resample(samples, rate, 16000), np.zeros(16000, np.int16)]
        if parts:
            return np.concatenate(parts), source
    t = np.arange(16000) / 16000
    burst = (3000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    return np.concatenate([burst, np.zeros(16000, np.int16)] * 2), "tone bursts"


async def bench(
    provider: str, rate: int, audio16k: npt.NDArray[np.int16], seconds: float
) -> dict[str, float]:
    cfg = VadConfig(provider=provider)  # type: ignore[arg-type]
    model = await build_model(cfg)

    async def never(_: str) -> None:
        return None

    session = VadSession(MemoryBroker().bus("vad"), "bench", rate, cfg, model, never)
    wire = [
        encode(AudioChunk(call_id="bench", seq=0, sample_rate=rate, pcm=array_to_pcm(f)))
        for f in frames(resample(audio16k, 16000, rate), rate // 50)
    ]
    n_frames = int(seconds * 50)
    timings = np.empty(n_frames)
    events = 0
    for seq in range(n_frames):
        data = wire[seq % len(wire)]
        started = time.perf_counter()
        chunk = decode(data)
        assert isinstance(chunk, AudioChunk) and chunk.problem(rate) is None
        events += len(session.process(seq, chunk.pcm))
        timings[seq] = time.perf_counter() - started
    ms = timings * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "calls": 1000.0 / float(ms.mean()) / 50,
        "events": events,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio seconds per case")
    args = parser.parse_args()
    configure_logging("bench-vad", "WARNING")
    audio, source = speech_16k()
    print(f"audio: {source}, {audio.size / 16000:.1f} s looped to {args.seconds:.0f} s per case")
    print(
        f"{'provider':<8} {'rate':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
        f"{'calls/core':>10} {'events':>6}"
    )
    for provider in ("energy", "silero"):
        for rate in (8000, 16000):
            r = await bench(provider, rate, audio, args.seconds)
            print(
                f"{provider:<8} {rate:>6} {r['p50']:>8.3f} {r['p95']:>8.3f} {r['p99']:>8.3f} "
                f"{r['mean']:>8.3f} {r['calls']:>10.0f} {r['events']:>6.0f}"
            )
    print("whole service on the in-memory bus, 20 calls at once (bus dispatch, publisher encode included):")
    for provider in ("energy", "silero"):
        for rate in (8000, 16000):
            fps = await bench_service_path(provider, rate, audio, calls=20)
            print(f"{provider:<8} {rate:>6} {fps:>9.0f} frames/s = {fps / 50:>5.0f} calls/core")


async def bench_service_path(provider: str, rate: int, audio16k: npt.NDArray[np.int16], calls: int) -> float:
    """Frames/s through the whole service on the in-memory bus (publisher's encode included)."""
    with tempfile.TemporaryDirectory() as robots:
        bot = Path(robots) / "bench_bot"
        bot.mkdir()
        cfg = {"mode": "pipeline", "llm": {"provider": "openai"}, "vad": {"provider": provider}}
        (bot / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        broker = MemoryBroker()
        service = VadService(VadSettings(robots_dir=Path(robots), instance_id="bench", max_calls=calls))
        await service.start(broker.bus("vad"))
        client = broker.bus("gateway")
        pcm = [array_to_pcm(f) for f in frames(resample(audio16k, 16000, rate), rate // 50)]
        for c in range(calls):
            req = AssignRequest(call_id=f"c{c}", role="vad", robot="bench_bot", sample_rate=rate)
            assert (await client.request(subjects.assign("vad"), req)).accepted  # type: ignore[attr-defined]
        started = time.perf_counter()
        for seq, frame in enumerate(pcm):
            for c in range(calls):
                chunk = AudioChunk(call_id=f"c{c}", seq=seq, sample_rate=rate, pcm=frame)
                await client.publish(subjects.audio_in(f"c{c}"), chunk)
            await asyncio.sleep(0)
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:  # the handlers drain their inboxes
            if sum(s.frames for s in service.sessions.values()) >= len(pcm) * calls:
                break
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        await service.drain(1.0)
        return len(pcm) * calls / elapsed


if __name__ == "__main__":
    asyncio.run(main())
