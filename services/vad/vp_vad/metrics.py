"""VAD-specific metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Histogram

SERVICE = "vad"

FRAME_PROCESSING_MS = Histogram(
    "vp_vad_frame_processing_ms",
    "Time to score and segment one 20 ms frame, in milliseconds",
    ["provider"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20),
)
