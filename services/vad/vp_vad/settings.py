"""VAD process settings (env prefix ``VP_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from voiceplatform.config import ServiceSettings


class VadSettings(ServiceSettings):
    # every caller frame passes through this service: uvloop halves the event loop's share of it
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # another silero ONNX file instead of the one shipped in the silero-vad wheel
    silero_model_path: Path | None = None
    # a call that sent no audio for this long is dropped (its gateway vanished without call.ended)
    idle_timeout_s: float = 120.0
    # load the silero session at start so the first silero call does not wait for it
    preload_silero: bool = True
    # the end-of-turn model file (VP_SMART_TURN_MODEL); default <prefix>/share/voiceplatform/models/
    smart_turn_model: Path | None = None
    # load the end-of-turn model at start (only robots that use it need it)
    preload_eot: bool = True
