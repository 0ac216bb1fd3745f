"""Per-attempt provider usage for cost: one ``provider.usage`` message and its Prometheus counters.

Every stage calls :func:`publish_usage` once per provider attempt that reached the provider (failed,
stalled and cancelled ones included), where it iterates its fallback chain. The message goes to the
call's lifecycle subject, which the recorder keeps; the counter is per process, never per call.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import structlog
from prometheus_client import Counter

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.providers.errors import ProviderTimeoutError
from voiceplatform.wire import ProviderUsage

log = structlog.get_logger("voiceplatform.providers.usage")

Stage = Literal["asr", "llm", "tts", "realtime"]
Outcome = Literal["ok", "failed", "cancelled", "timeout"]

PROVIDER_USAGE = Counter(
    "vp_provider_usage_total",
    "Provider consumption for cost, by unit: requests (every attempt), failed_requests (failed or "
    "timed out), audio_seconds, prompt_tokens, completion_tokens, characters",
    ["stage", "provider", "unit"],
)


def outcome_of(exc: BaseException | None) -> Outcome:
    """The outcome of an attempt that ended with ``exc`` (None: it finished)."""
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, ProviderTimeoutError | TimeoutError):
        return "timeout"
    return "failed"


def count_usage(msg: ProviderUsage) -> None:
    """Add one attempt to ``vp_provider_usage_total`` (only the units it has, requests always)."""
    amounts = {
        "requests": 1.0,
        "failed_requests": 1.0 if msg.outcome in ("failed", "timeout") else 0.0,
        "audio_seconds": max(0, msg.audio_ms) / 1000,
        "prompt_tokens": float(max(0, msg.prompt_tokens)),
        "completion_tokens": float(max(0, msg.completion_tokens)),
        "characters": float(max(0, msg.characters)),
    }
    for unit, amount in amounts.items():
        if amount or unit == "requests":
            PROVIDER_USAGE.labels(msg.stage, msg.provider, unit).inc(amount)


async def publish_usage(
    bus: Bus,
    call_id: str,
    *,
    stage: Stage,
    provider: str,
    turn_id: str,
    model: str = "",
    audio_ms: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    characters: int = 0,
    outcome: Outcome = "ok",
) -> None:
    """Count one provider attempt and publish it as ``provider.usage`` on the call's usage subject.

    Never raises on a publish failure (it runs in ``finally`` blocks of attempts, where it must not
    replace the attempt's own error); the counter is incremented either way.
    """
    msg = ProviderUsage(
        call_id=call_id,
        turn_id=turn_id,
        stage=stage,
        provider=provider,
        model=model,
        audio_ms=audio_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        characters=characters,
        outcome=outcome,
    )
    count_usage(msg)
    try:
        await bus.publish(subjects.usage(call_id), msg)
    except Exception as exc:
        log.warning(
            "provider.usage_publish_failed",
            call_id=call_id,
            stage=stage,
            provider=provider,
            error=type(exc).__name__,
        )
