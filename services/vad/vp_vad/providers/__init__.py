"""VAD models by name, imported lazily (onnxruntime loads only in processes that use silero)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import structlog

from voiceplatform.config import VadConfig
from voiceplatform.providers import catalog
from voiceplatform.providers.base import ProviderContext
from voiceplatform.providers.interfaces import VadModel

if TYPE_CHECKING:
    from ..eot import EotModel

log = structlog.get_logger("vp_vad.providers")

VAD_MODELS = catalog.registry("vad")

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

        await load_shared_session(silero_model_path)  # off the event loop, once per process
    return cast(VadModel, cls.from_context(ProviderContext(options=cfg)))


def wants_eot_model(cfg: VadConfig) -> bool:
    """ "auto": the model with silero only; energy VAD keeps the plain silence rule."""
    if cfg.eot_model == "auto":
        return cfg.provider == "silero"
    return cfg.eot_model == "smart_turn"


async def build_eot_model(cfg: VadConfig, path: Path | None = None) -> EotModel | None:
    """The end-of-turn model for a robot, or None (not wanted, or missing: turns end on silence)."""
    if not wants_eot_model(cfg):
        return None
    from ..eot import EotModelMissing, SmartTurn, load_shared_session

    try:
        session = await load_shared_session(path)
    except (EotModelMissing, OSError, RuntimeError) as exc:
        log.warning("vad.eot_model_unavailable", error=str(exc)[:200])
        return None
    return SmartTurn(session)
