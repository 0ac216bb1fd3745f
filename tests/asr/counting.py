"""A test-only ASR provider that counts its decodes and says which frames it was given.

The test caller fills every 20 ms frame with its own sequence number, so a segment's first and last
samples name the first and last frame the session cut: the transcript is ``"<first>-<last>"``.
``gate``, when set, holds each decode until it opens (a decode in flight while VAD events arrive).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import ClassVar

import numpy as np

from tests.asr.local import LocalAsr
from voiceplatform.config import AsrConfig
from voiceplatform.providers import Transcript


class CountingAsr(LocalAsr):
    name = "counting"
    sample_rates = (8000, 16000)
    segments: ClassVar[list[bytes]] = []
    configs: ClassVar[list[AsrConfig]] = []
    gate: ClassVar[asyncio.Event | None] = None

    def __init__(self, config: AsrConfig) -> None:
        CountingAsr.configs.append(config)

    @classmethod
    def reset(cls) -> None:
        cls.segments, cls.configs, cls.gate = [], [], None

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        pcm = b"".join([chunk async for chunk in audio])
        CountingAsr.segments.append(pcm)
        if CountingAsr.gate is not None:
            await CountingAsr.gate.wait()
        yield Transcript(frame_span(pcm), is_final=True, language="ru")


def frame_span(pcm: bytes) -> str:
    samples = np.frombuffer(pcm, dtype="<i2")
    return f"{samples[0]}-{samples[-1]}" if samples.size else ""
