"""VAD models by name, imported lazily (onnxruntime loads only in processes that use silero)."""

from __future__ import annotations

from pathlib import Path

from voiceplatform.config import VadConfig
from voiceplatform.providers.interfaces import VadModel
from voiceplatform.providers.registry import ProviderRegistry

VAD_MODELS = ProviderRegistry(
    "vad",
    {
        "energy": "vp_vad.providers.energy:EnergyVad",
        "silero": "vp_vad.providers.silero:SileroVad",
    },
)

# silero's "off" threshold sits this far below "on" so a probability wobbling around one value
# does not end an utterance mid-word
SILERO_OFF_GAP = 0.15


def hysteresis(cfg: VadConfig) -> tuple[float, float]:
    """(on, off) probability thresholds for the segmenter."""
    if cfg.provider == "silero":
        return cfg.threshold, max(cfg.threshold - SILERO_OFF_GAP, 0.01)
    # energy scores are 0 or 1
    return 0.5, 0.5


async def build_model(cfg: VadConfig, silero_model_path: Path | None = None) -> VadModel:
    """A fresh per-call model for a robot's VAD config."""
    cls = VAD_MODELS.load(cfg.provider)
    if cfg.provider == "silero":
        from .silero import load_shared_session

        session = await load_shared_session(silero_model_path)
        model: VadModel = cls(session)
        return model
    model = cls(cfg.energy_threshold)
    return model
