"""Per-provider usage of one call, for cost: ``provider.usage`` events summed by stage, provider, model.

The same rows (and the same meaning) as the PostgreSQL view ``call_usage`` (migration 004), without
its ``call_id``: they go into the transcript (``metadata.usage.by_provider``: MongoDB, the JSON call
log, ``GET /calls/{id}``) and the public ``call.ended`` summary (``summary.usage``). Pure: callers
pass events already deduplicated by stream sequence, so a redelivered event counts once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voiceplatform.wire import Message, ProviderUsage

# an attempt the provider did not complete; a cancelled one (barge-in, call end) is no failure
FAILED_OUTCOMES = ("failed", "timeout")
_SUMMED = ("requests", "failed", "audio_ms", "prompt_tokens", "completion_tokens", "characters")


def usage_rows(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """One row per (stage, provider, model), sorted by them.

    ``requests``: attempts; ``failed``: those that failed or timed out; ``asr_seconds``: audio sent
    (``audio_ms`` / 1000, 3 decimals); tokens and characters summed as reported.
    """
    sums: dict[tuple[str, str, str], dict[str, int]] = {}
    for msg in messages:
        if not isinstance(msg, ProviderUsage):
            continue
        key = (msg.stage, msg.provider, msg.model)
        row = sums.setdefault(key, dict.fromkeys(_SUMMED, 0))
        row["requests"] += 1
        row["failed"] += msg.outcome in FAILED_OUTCOMES
        row["audio_ms"] += max(0, msg.audio_ms)
        row["prompt_tokens"] += max(0, msg.prompt_tokens)
        row["completion_tokens"] += max(0, msg.completion_tokens)
        row["characters"] += max(0, msg.characters)
    return [
        {
            "stage": stage,
            "provider": provider,
            "model": model,
            "requests": row["requests"],
            "failed": row["failed"],
            "asr_seconds": round(row["audio_ms"] / 1000, 3),
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "characters": row["characters"],
        }
        for (stage, provider, model), row in sorted(sums.items())
    ]
