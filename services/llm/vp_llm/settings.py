"""LLM service settings (env prefix ``VP_``)."""

from __future__ import annotations

from typing import Literal

from voiceplatform.config import ServiceSettings


class LlmSettings(ServiceSettings):
    # a few bus round trips per turn of every call: uvloop's transports and futures cost less
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # interrupted turn ids are remembered this long, so a late llm.request for them is ignored
    interrupt_memory_s: float = 120.0
    # how long cancelling a turn may take before we stop waiting for it
    cancel_timeout_s: float = 2.0
    # a clause longer than this is sent to TTS at its next comma
    clause_chars: int = 120
