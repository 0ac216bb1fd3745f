"""Realtime process settings (env prefix ``VP_``)."""

from __future__ import annotations

from voiceplatform.config import ServiceSettings


class RealtimeSettings(ServiceSettings):
    # a call that sent no audio and got no provider event for this long is dropped (gateway vanished)
    idle_timeout_s: float = 120.0
