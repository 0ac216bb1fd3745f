"""ASR-specific Prometheus metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from voiceplatform.metrics import LATENCY_BUCKETS_MS

SERVICE = "asr"

INFERENCE_MS = Histogram(
    "vp_asr_inference_ms",
    "Time the provider spent on one segment (queueing for the model included)",
    ["provider"],
    buckets=LATENCY_BUCKETS_MS,
)
REAL_TIME_FACTOR = Histogram(
    "vp_asr_real_time_factor",
    "Provider time divided by segment audio duration",
    ["provider"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0),
)
SEGMENTS = Counter(
    "vp_asr_segments_total",
    "Speech segments handled, by outcome (text, empty, too_short, error, cancelled)",
    ["outcome"],
)
HALLUCINATIONS_DROPPED = Counter(
    "vp_asr_hallucinations_dropped_total",
    "Transcripts discarded as hallucinations, by reason "
    "(compression_ratio, repeat_loop, stock_phrase, prompt_echo)",
    ["provider", "reason"],
)
MODEL_LOAD_SECONDS = Gauge("vp_asr_model_load_seconds", "Time to assemble and load the model", ["provider"])
FALLBACKS = Counter(
    "vp_asr_fallbacks_total",
    "Segments handed to the next provider of the chain after one failed on them",
    ["from_provider", "to_provider"],
)
SPECULATIVE = Counter(
    "vp_asr_speculative_total",
    "Speculative recognitions started on vad.speech_paused: hit (published at the turn's end) or "
    "miss_<why> (discarded: resumed, offset_changed, merged, paused_again, never_ended), or skipped "
    "(the end-of-turn probability was too low to start)",
    ["result"],
)
MERGES = Counter(
    "vp_asr_merges_total",
    "Continuations (control.interrupt reason=continued), by when they arrived: ahead (before "
    "recognition), restarted, pending (before the turn started), too_late, unknown_turn",
    ["when"],
)
