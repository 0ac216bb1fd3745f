"""ASR process settings (env prefix ``VP_``)."""

from __future__ import annotations

from pydantic import Field

from voiceplatform.config import ServiceSettings


class AsrSettings(ServiceSettings):
    # providers whose models load at start, before the instance takes calls
    # (env VP_PRELOAD_PROVIDERS='["whisper"]')
    preload_providers: list[str] = Field(default_factory=lambda: ["whisper"])
    # after vad.speech_ended, how long to wait for the utterance's last audio frames
    tail_wait_ms: int = Field(default=150, ge=0, le=2000)
    # rolling caller-audio buffer per call; whisper decodes at most 30 s in one window
    buffer_ms: int = Field(default=30_000, ge=10_000, le=120_000)
    # shorter speech yields an empty asr.final without running the model
    min_speech_ms: int = Field(default=200, ge=0, le=2000)
