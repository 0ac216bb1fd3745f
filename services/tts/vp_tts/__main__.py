"""``python -m vp_tts``: run the TTS service."""

from __future__ import annotations

from voiceplatform.runtime import service_main

from .app import TtsService
from .settings import TtsSettings


def build() -> tuple[TtsService, TtsSettings]:
    settings = TtsSettings()
    return TtsService(settings), settings


if __name__ == "__main__":
    service_main(build)
