"""Pure translations from wire messages: public call events (JSON) and per-turn latencies.

The public event shape is a contract for other systems (docs/call_events.md):
``{"id": ..., "type": ..., "v": 1, "call_id": ..., "ts_ms": ..., "data": {...}}`` (docs/asyncapi.yaml).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import (
    CallAmd,
    CallDialed,
    CallEnded,
    CallRecording,
    CallStarted,
    ControlInterrupt,
    Message,
    PromptSwitched,
    TurnMetrics,
)

PUBLIC_EVENT_VERSION = 1
REDIS_CHANNEL = "call_events"


def ms_to_datetime(ts_ms: int) -> datetime | None:
    """Wall-clock milliseconds → aware UTC datetime; 0 (the stage did not happen) → None."""
    if ts_ms <= 0:
        return None
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def _data(msg: Message) -> tuple[str, dict[str, Any]] | None:
    match msg:
        case CallStarted():
            return "call.started", {
                "robot": msg.robot,
                "channel": msg.channel,
                "caller": msg.caller,
                "mode": msg.mode,
                "sample_rate": msg.sample_rate,
            }
        case TurnMetrics():
            return "turn.completed", {
                "turn_id": msg.turn_id,
                "user_text": msg.user_text,
                "bot_text": msg.bot_text,
                "interrupted": msg.interrupted,
                "played_text": msg.played_text,
                "outcome": msg.outcome or ("cut" if msg.interrupted else "played"),
                "speech_end_ts_ms": msg.speech_end_ts_ms or None,
                "latency": dict(turn_figures(msg)),
                "track": msg.track or None,
            }
        case PromptSwitched():
            return "prompt.switched", {
                "turn_id": msg.turn_id,
                "from_prompt": msg.from_prompt,
                "to_prompt": msg.to_prompt,
                "matched": msg.matched,
            }
        case ControlInterrupt() if msg.by_turn_id and msg.reason == "barge_in":
            # only the caller's barge-in; the gateway also cuts replies the caller continued,
            # superseded or only backchannelled over, and interrupts playout when a call ends
            return "barge_in", {
                "turn_id": msg.turn_id,
                "by_turn_id": msg.by_turn_id,
                "played_ms": msg.played_ms,
                "played_text": msg.played_text,
            }
        case CallDialed():
            return "call.dialed", {
                "campaign_id": msg.campaign_id,
                "number": msg.number,
                "attempt": msg.attempt,
                "outcome": msg.outcome,
                "cause": msg.cause,
            }
        case CallAmd():
            return "call.amd", {
                "result": msg.result,
                "reason": msg.reason,
                "after_ms": msg.after_ms,
                "action": msg.action,
                "words": msg.words,
            }
        case CallRecording():
            return "call.recording", {
                "action": msg.action,
                "path": msg.path,
                "format": msg.format or None,
                "channels": msg.channels or None,
                "duration_ms": msg.duration_ms,
            }
        case CallEnded():
            return "call.ended", {
                "reason": msg.reason,
                "duration_ms": msg.duration_ms,
                "turns": msg.turns,
                "transfer_to": msg.transfer_to or None,
            }
    return None


def public_event(msg: Message, event_id: str, summary: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The public event for a wire message, or None when the message has none.

    ``event_id`` is the stored event's id (the same on every redelivery, so subscribers can drop
    repeats); ``summary`` is the call's summary, carried by ``call.ended``.
    """
    found = _data(msg)
    if found is None:
        return None
    event_type, data = found
    if summary is not None and event_type == "call.ended":
        data["summary"] = summary
    return {
        "id": event_id,
        "type": event_type,
        "v": PUBLIC_EVENT_VERSION,
        "call_id": msg.call_id,
        "ts_ms": msg.ts_ms,
        "data": data,
    }


def encode_public(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (as ``json.dumps(ensure_ascii=False, separators=(",", ":"))`` writes it,
    at a fifth of the cost: one is built per public event)."""
    return msgspec.json.encode(event)
