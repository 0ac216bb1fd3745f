"""Festival TTS (Debian ``festival`` + ``festvox-ru``, voice ``msu_ru_nsh_clunits``, 16 kHz).

The most intelligible offline Russian voice here. A warm process synthesizes a whole sentence in
tens of milliseconds, so the sentence is synthesized at once and then yielded in short chunks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Self

from voiceplatform.audio import array_to_pcm, resample
from voiceplatform.providers import ProviderProtocolError
from voiceplatform.providers.base import ProviderBase, ProviderContext

from ..settings import TtsSettings
from ..verbalize import verbalize
from .festival_pool import PROVIDER, FestivalPool
from .festival_text import festival_safe_text

SAMPLE_RATE = 16000


class FestivalTts(ProviderBase):
    name = PROVIDER
    sample_rate = SAMPLE_RATE

    scope = "process"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.settings)

    def __init__(self, settings: TtsSettings) -> None:
        self.chunk_ms = settings.chunk_ms
        self.pool = FestivalPool(
            settings.festival_procs,
            settings.festival_voice,
            settings.festival_timeout_s,
            settings.festival_startup_timeout_s,
        )

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        await self.pool.stop()

    def ready(self) -> bool:
        return self.pool.warm

    def health(self) -> dict[str, Any]:
        return {
            "processes": len(self.pool.processes),
            "alive": sum(p.alive for p in self.pool.processes),
            "restarts": sum(p.restarts for p in self.pool.processes),
        }

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        safe = festival_safe_text(verbalize(text))
        if not safe:
            return  # nothing speakable (only symbols): no audio, not an error
        samples, rate = await self.pool.synthesize(safe, voice)
        if samples.size == 0:
            raise ProviderProtocolError(PROVIDER, "empty wave for non-empty text")
        if rate != SAMPLE_RATE:
            samples = resample(samples, rate, SAMPLE_RATE)
        step = SAMPLE_RATE * self.chunk_ms // 1000
        for start in range(0, samples.size, step):
            yield array_to_pcm(samples[start : start + step])
