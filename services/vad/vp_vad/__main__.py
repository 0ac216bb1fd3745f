"""``python -m vp_vad``: run the VAD service."""

from __future__ import annotations

from voiceplatform.runtime import service_main

from .app import VadService
from .settings import VadSettings


def build() -> tuple[VadService, VadSettings]:
    settings = VadSettings()
    return VadService(settings), settings


if __name__ == "__main__":
    service_main(build)
