"""Synthetic audio, robot folders and bus helpers for the VAD tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceplatform import subjects
from voiceplatform.audio import array_to_pcm, frames, read_wav, resample
from voiceplatform.bus import Bus, Envelope
from voiceplatform.wire import AudioChunk, Message

Pcm = npt.NDArray[np.int16]


def make_robot(robots_dir: Path, name: str, vad: dict[str, Any]) -> str:
    folder = robots_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"mode": "pipeline", "llm": {"provider": "openai"}, "vad": vad}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return name


def silence(rate: int, ms: int) -> Pcm:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def tone(rate: int, ms: int, amplitude: float = 3000.0, hz: float = 440.0) -> Pcm:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def white_noise(rate: int, ms: int, std: float, seed: int = 7) -> Pcm:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, std, rate * ms // 1000), -32768, 32767).astype(np.int16)


def chunks(call_id: str, samples: Pcm, rate: int, first_seq: int = 0) -> list[AudioChunk]:
    return [
        AudioChunk(call_id=call_id, seq=first_seq + i, sample_rate=rate, pcm=array_to_pcm(f))
        for i, f in enumerate(frames(samples, rate // 50))
    ]


class Collector:
    """Subscribes to a subject and keeps every message it sees."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handler(self, env: Envelope) -> Message | None:
        self.messages.append(env.message)
        return None

    def of(self, cls: type[Message]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, cls)]

    async def wait(self, predicate: Callable[[], bool], within: float = 3.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; got {[m.type_name for m in self.messages]}")
            await asyncio.sleep(0.01)


async def collect(bus: Bus, subject: str) -> Collector:
    c = Collector()
    await bus.subscribe(subject, c.handler)
    return c


async def stream(bus: Bus, items: list[AudioChunk]) -> None:
    for chunk in items:
        await bus.publish(subjects.audio_in(chunk.call_id), chunk)


def synthesize_russian(text: str) -> tuple[Pcm, int] | None:  # (samples, 16000)
    """Festival's Russian voice at 16 kHz, else espeak-ng; None when neither is installed."""
    with tempfile.TemporaryDirectory() as tmp:
        txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        txt.write_text(text, encoding="utf-8")
        if shutil.which("text2wave"):
            subprocess.run(
                ["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)", str(txt), "-o", str(wav), "-F", "16000"],
                check=True,
                capture_output=True,
                timeout=60,
            )
        elif shutil.which("espeak-ng"):
            subprocess.run(["espeak-ng", "-v", "ru", "-w", str(wav), text], check=True, timeout=60)
        else:
            return None
        samples, rate = read_wav(wav)
        return resample(samples, rate, 16000), 16000
