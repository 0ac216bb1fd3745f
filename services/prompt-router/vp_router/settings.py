"""Prompt-router settings (env prefix ``VP_``)."""

from __future__ import annotations

from typing import Literal

from voiceplatform.config import ServiceSettings


class RouterSettings(ServiceSettings):
    # a few bus round trips per turn of every call: uvloop's transports and futures cost less
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    # messages of history sent with each llm.request
    history_limit: int = 20
    # messages kept in the dialog store per call (bounds the KV value size on long calls)
    stored_history: int = 100
    # the KV bucket's max age, applied when this service creates it: state of calls whose
    # call.ended was lost disappears on its own
    dialog_ttl_s: float = 7200.0
