"""Per-turn timestamps, measured once at the gateway (where the caller hears the turn)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voiceplatform.wire import TurnMetrics


@dataclass
class TurnClock:
    turn_id: str
    user_text: str = ""
    speech_end_ts_ms: int = 0
    asr_final_ts_ms: int = 0
    first_sentence_ts_ms: int = 0
    first_audio_ts_ms: int = 0
    first_played_ts_ms: int = 0
    sentences: dict[int, str] = field(default_factory=dict)
    expects_reply: bool = False
    completed: bool = False
    interrupted: bool = False
    played_text: str = ""

    @property
    def bot_text(self) -> str:
        return " ".join(self.sentences[i] for i in sorted(self.sentences))

    def metrics(self, call_id: str) -> TurnMetrics:
        return TurnMetrics(
            call_id=call_id,
            turn_id=self.turn_id,
            user_text=self.user_text,
            bot_text=self.bot_text,
            speech_end_ts_ms=self.speech_end_ts_ms,
            asr_final_ts_ms=self.asr_final_ts_ms,
            first_sentence_ts_ms=self.first_sentence_ts_ms,
            first_audio_ts_ms=self.first_audio_ts_ms,
            first_played_ts_ms=self.first_played_ts_ms,
            interrupted=self.interrupted,
            played_text=self.played_text,
        )


def latencies(m: TurnMetrics) -> dict[str, int | None]:
    """Milliseconds from the end of the caller's speech to each stage (None: stage did not happen)."""

    def since_speech_end(ts: int) -> int | None:
        return ts - m.speech_end_ts_ms if ts and m.speech_end_ts_ms else None

    return {
        "asr_ms": since_speech_end(m.asr_final_ts_ms),
        "llm_first_sentence_ms": since_speech_end(m.first_sentence_ts_ms),
        "tts_first_audio_ms": since_speech_end(m.first_audio_ts_ms),
        "voice_to_voice_ms": since_speech_end(m.first_played_ts_ms),
    }


def metrics_event(m: TurnMetrics) -> dict[str, Any]:
    return {
        "type": "turn.metrics",
        "turn_id": m.turn_id,
        "user_text": m.user_text,
        "bot_text": m.bot_text,
        "interrupted": m.interrupted,
        "played_text": m.played_text,
        **latencies(m),
    }
