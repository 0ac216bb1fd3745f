"""The ``pipeline_log`` of a call transcript: every stored event with a small per-type detail."""

from __future__ import annotations

from typing import Any

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import (
    AsrFinal,
    AsrPartial,
    CallEnded,
    CallStarted,
    ControlHangup,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    Message,
    PromptSwitched,
    ProviderUsage,
    StageError,
    TtsAudio,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)
from vp_recorder.stored import StoredEvent


def offset_ms(ts_ms: int | None, start_ms: int | None) -> int | None:
    """Milliseconds from the start of the call; None when either moment is unknown."""
    if ts_ms is None or start_ms is None or ts_ms <= 0:
        return None
    return ts_ms - start_ms


def log_entry(event: StoredEvent, start_ms: int | None) -> dict[str, Any]:
    msg = event.message
    turn_id = getattr(msg, "turn_id", "")
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "type": msg.type_name,
        "ts_ms": msg.ts_ms,
        "offset_ms": offset_ms(msg.ts_ms, start_ms),
        "turn_id": turn_id if isinstance(turn_id, str) and turn_id else None,
        "detail": _detail(msg),
    }


def _detail(msg: Message) -> dict[str, Any]:
    """A few fields per type; never audio, never what another field of the document already holds."""
    match msg:
        case CallStarted():
            return {
                "robot": msg.robot,
                "channel": msg.channel,
                "mode": msg.mode,
                "sample_rate": msg.sample_rate,
            }
        case CallEnded():
            return {"reason": msg.reason, "duration_ms": msg.duration_ms, "turns": msg.turns}
        case VadSpeechStarted():
            return {"audio_offset_ms": msg.audio_offset_ms}
        case VadSpeechEnded():
            return {"audio_offset_ms": msg.audio_offset_ms, "speech_ms": msg.speech_ms}
        case AsrPartial():
            return {"text": msg.text}
        case AsrFinal():
            return {
                "text": msg.text,
                "audio_ms": msg.audio_ms,
                "processing_ms": msg.processing_ms,
                "provider": msg.provider,
            }
        case LlmSentence():
            return {"index": msg.index, "text": msg.text, "last": msg.last}
        case LlmDone():
            return {
                "sentences": msg.sentences,
                "chars": len(msg.text),
                "interrupted": msg.interrupted,
                "provider": msg.provider,
                "prompt_tokens": msg.prompt_tokens,
                "completion_tokens": msg.completion_tokens,
                "hangup": msg.hangup,
            }
        case PromptSwitched():
            return {"from": msg.from_prompt, "to": msg.to_prompt, "matched": msg.matched}
        case ControlInterrupt():
            return {
                "by_turn_id": msg.by_turn_id,
                "played_ms": msg.played_ms,
                "played_text": msg.played_text,
                "reason": msg.reason,
            }
        case ControlHangup():
            return {"reason": msg.reason, "graceful": msg.graceful}
        case TurnMetrics():
            return {"interrupted": msg.interrupted, "outcome": msg.outcome, **turn_figures(msg)}
        case StageError():
            return {"stage": msg.stage, "kind": msg.kind, "retryable": msg.retryable, "detail": msg.detail}
        case ProviderUsage():
            return {
                "stage": msg.stage,
                "provider": msg.provider,
                "model": msg.model,
                "outcome": msg.outcome,
                "audio_ms": msg.audio_ms,
                "prompt_tokens": msg.prompt_tokens,
                "completion_tokens": msg.completion_tokens,
                "characters": msg.characters,
            }
        case TtsAudio():
            return {"index": msg.index, "chunk": msg.seq, "last": msg.last, "bytes": len(msg.pcm)}
    return {}
