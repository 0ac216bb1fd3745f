"""Per-turn latency figures, derived in one place from the gateway's ``turn.metrics``.

The gateway measures the timestamps once (where the turn is heard); every store, report and public
event derives its numbers with :func:`turn_figures`, so a figure means the same thing everywhere.

Two views of the same timestamps:
- ``*_ms`` since the end of the caller's speech (cumulative: what the caller waits);
- ``*_latency_ms`` per stage (ASR, LLM, TTS): where the time went.
``None`` means the stage did not happen (no speech, nothing said, interrupted before audio).
"""

from __future__ import annotations

from typing import TypedDict

from voiceplatform.wire import TurnMetrics


class TurnFigures(TypedDict):
    asr_ms: int | None
    llm_first_sentence_ms: int | None
    tts_first_audio_ms: int | None
    voice_to_voice_ms: int | None
    asr_latency_ms: int | None
    llm_latency_ms: int | None
    tts_latency_ms: int | None


def _span(start_ms: int, end_ms: int) -> int | None:
    if start_ms <= 0 or end_ms <= 0:
        return None
    return end_ms - start_ms


def turn_figures(m: TurnMetrics) -> TurnFigures:
    return {
        "asr_ms": _span(m.speech_end_ts_ms, m.asr_final_ts_ms),
        "llm_first_sentence_ms": _span(m.speech_end_ts_ms, m.first_sentence_ts_ms),
        "tts_first_audio_ms": _span(m.speech_end_ts_ms, m.first_audio_ts_ms),
        "voice_to_voice_ms": _span(m.speech_end_ts_ms, m.first_played_ts_ms),
        "asr_latency_ms": _span(m.speech_end_ts_ms, m.asr_final_ts_ms),
        "llm_latency_ms": _span(m.asr_final_ts_ms, m.first_sentence_ts_ms),
        "tts_latency_ms": _span(m.first_sentence_ts_ms, m.first_audio_ts_ms),
    }
