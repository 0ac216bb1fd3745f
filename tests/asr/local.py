"""A base for test-only ASR providers: built per call from the robot's ``AsrConfig``, like whisper."""

from __future__ import annotations

from typing import Self

from voiceplatform.config import AsrConfig
from voiceplatform.providers.base import ProviderBase, ProviderContext


class LocalAsr(ProviderBase):
    scope = "call"
    sample_rates: tuple[int, ...] = (8000, 16000)

    def __init__(self, config: AsrConfig | None = None) -> None:
        self.config = config or AsrConfig()

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.options)
