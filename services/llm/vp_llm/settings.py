"""LLM service settings (env prefix ``VP_``)."""

from __future__ import annotations

from voiceplatform.config import ServiceSettings


class LlmSettings(ServiceSettings):
    # interrupted turn ids are remembered this long, so a late llm.request for them is ignored
    interrupt_memory_s: float = 120.0
    # how long cancelling a turn may take before we stop waiting for it
    cancel_timeout_s: float = 2.0
    # a clause longer than this is sent to TTS at its next comma
    clause_chars: int = 120
