"""VAD-specific metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SERVICE = "vad"

FRAME_PROCESSING_MS = Histogram(
    "vp_vad_frame_processing_ms",
    "Time to score and segment one 20 ms frame, in milliseconds",
    ["provider"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20),
)

EOT_INFERENCE_MS = Histogram(
    "vp_vad_eot_inference_ms",
    "End-of-turn model: features + inference for one pause, in the worker thread, in milliseconds",
    buckets=(10, 20, 30, 45, 60, 80, 120, 200, 400, 1000),
)

EOT_WAIT_MS = Histogram(
    "vp_vad_eot_wait_ms",
    "From a pause to the end-of-turn model's answer (queueing included), in milliseconds",
    buckets=(20, 40, 60, 80, 120, 200, 400, 800, 1600),
)

EOT_RESULTS = Counter(
    "vp_vad_eot_results_total",
    "End-of-turn model answers: complete, incomplete, stale (speech resumed first), error",
    ["result"],
)

TURNS_ENDED = Counter(
    "vp_vad_turns_ended_total",
    "Turns ended, by what ended them: silence (no model), model_short, model_long, truncated, flush",
    ["reason"],
)
