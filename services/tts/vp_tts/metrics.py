"""TTS-specific metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

from voiceplatform import metrics

SERVICE = "tts"

CHARS = Counter(
    "vp_tts_chars_total",
    "Characters synthesized (after text normalization), by provider; for cost",
    ["provider"],
)
SENTENCES = Counter(
    "vp_tts_sentences_total",
    "Sentences handled, by outcome (ok, fallback, failed, interrupted, empty, track)",
    ["outcome"],
)
SENTENCES_DROPPED = Counter(
    "vp_tts_sentences_dropped_total",
    "llm.sentence messages not synthesized, by reason (interrupted, draining, bad_sample_rate)",
    ["reason"],
)
FALLBACKS = Counter(
    "vp_tts_fallbacks_total",
    "Sentences handed to the next provider of the chain",
    ["from_provider", "to_provider"],
)
ROBOT_CONFIG_ERRORS = Counter(
    "vp_tts_robot_config_errors_total", "Sentences whose robot config did not load (defaults were used)"
)
FIRST_AUDIO_MS = metrics.STAGE_LATENCY.labels(SERVICE, "tts_first_audio")
TRACKS_UNPLAYABLE = Counter(
    "vp_tts_tracks_unplayable_total",
    "llm_script recordings that could not be played (the track's text was synthesized instead)",
)
