"""EnergyVAD as in the seed system: a frame is speech when its RMS exceeds a fixed threshold."""

from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt

from voiceplatform.audio import rms
from voiceplatform.config import VadConfig
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.wire.messages import FRAME_MS


class EnergyVad(ProviderBase):
    """Scores each 20 ms frame 1.0 (RMS above ``energy_threshold``) or 0.0; stateless."""

    name = "energy"

    scope = "call"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        options = ctx.options if isinstance(ctx.options, VadConfig) else VadConfig()
        return cls(options.energy_threshold)

    def __init__(self, energy_threshold: float = 200.0) -> None:
        self.energy_threshold = energy_threshold

    def window_samples(self, sample_rate: int) -> int:
        return sample_rate * FRAME_MS // 1000

    def speech_probability(self, window: npt.NDArray[np.int16], sample_rate: int) -> float:
        return 1.0 if rms(window) > self.energy_threshold else 0.0

    def reset(self) -> None:
        return None
