"""Test-only TTS providers (registered into a test ProviderRegistry; never part of the product)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Self

import numpy as np

from voiceplatform.audio import array_to_pcm
from voiceplatform.providers import ProviderConnectionError, ProviderTimeoutError
from voiceplatform.providers.base import ProviderBase, ProviderContext
from vp_tts.settings import TtsSettings

RATE = 16000


def tone(ms: int, rate: int = RATE, freq: float = 440.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return array_to_pcm((np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16))


class LocalFake(ProviderBase):
    """Built once per process from the service settings, like a local engine."""

    scope = "process"

    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.settings)


class FailingTts(LocalFake):
    """Fails before any audio, like an engine that is down."""

    name = "failing"
    sample_rate = RATE
    calls = 0

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        type(self).calls += 1
        raise ProviderConnectionError(self.name, "engine down")
        yield b""  # pragma: no cover - makes this an async generator


class BreaksMidwayTts(LocalFake):
    """Yields one chunk, then fails: the sentence must not be restarted in another voice."""

    name = "breaks_midway"
    sample_rate = RATE

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        yield tone(100)
        raise ProviderTimeoutError(self.name, "stalled")


class SlowTts(LocalFake):
    """A long sentence streamed slowly (100 ms chunks every 50 ms); records being closed."""

    name = "slow"
    sample_rate = RATE
    chunks = 60
    started = 0
    closed = 0

    async def stream_synthesize(self, text: str, voice: str) -> AsyncIterator[bytes]:
        type(self).started += 1
        try:
            for _ in range(self.chunks):
                yield tone(100)
                await asyncio.sleep(0.05)
        finally:
            type(self).closed += 1
