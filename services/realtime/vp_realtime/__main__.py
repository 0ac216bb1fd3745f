"""``python -m vp_realtime``: run the realtime service."""

from __future__ import annotations

from voiceplatform.runtime import service_main

from .app import RealtimeService
from .settings import RealtimeSettings


def build() -> tuple[RealtimeService, RealtimeSettings]:
    settings = RealtimeSettings()
    return RealtimeService(settings), settings


if __name__ == "__main__":
    service_main(build)
