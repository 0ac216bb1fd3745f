"""ASR process settings (env prefix ``VP_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voiceplatform.config import ServiceSettings


class AsrSettings(ServiceSettings):
    # every caller frame passes through this service: uvloop halves the event loop's share of it
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # providers whose models load at start, before the instance takes calls
    # (env VP_PRELOAD_PROVIDERS='["whisper"]')
    preload_providers: list[str] = Field(default_factory=lambda: ["whisper"])
    # after a VAD end or pause, how long to wait for the utterance's last audio frames (they come on
    # another subscription); only spent when they are late
    tail_wait_ms: int = Field(default=300, ge=0, le=2000)
    # audio kept after the VAD's end offset (its last loud frame): fading word endings
    post_roll_ms: int = Field(default=200, ge=0, le=1000)
    # start recognizing on vad.speech_paused; the result is ready when the turn ends there
    speculate: bool = True
    # ...unless the VAD's end-of-turn model gives the pause less than this (-1, no model: always)
    speculate_min_eot: float = Field(default=0.2, ge=0.0, le=1.0)
    # rolling caller-audio buffer per call: a 30 s (merged) segment plus the VAD's end delay
    buffer_ms: int = Field(default=32_000, ge=10_000, le=120_000)
    # shorter speech yields an empty asr.final without running the model
    min_speech_ms: int = Field(default=200, ge=0, le=2000)
