"""Prometheus metrics shared by every service (each process exposes them at /metrics).

Counters live here, not in logs. Labels are low-cardinality: never a call id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_MS = (5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000)

MESSAGES_DROPPED = Counter(
    "vp_messages_dropped_total",
    "Messages that could not be accepted (malformed, wrong version, wrong frame), by reason",
    ["service", "stage", "reason"],
)
HANDLER_ERRORS = Counter(
    "vp_handler_errors_total", "Exceptions raised by message handlers", ["service", "stage"]
)
FRAMES_IN = Counter("vp_audio_frames_in_total", "Audio frames accepted", ["service"])
ACTIVE_CALLS = Gauge("vp_active_calls", "Calls currently owned by this process", ["service"])
STAGE_LATENCY = Histogram(
    "vp_stage_latency_ms",
    "Per-stage latency in milliseconds",
    ["service", "stage"],
    buckets=LATENCY_BUCKETS_MS,
)
PROVIDER_ERRORS = Counter(
    "vp_provider_errors_total", "Provider failures by provider and kind", ["service", "provider", "kind"]
)
TURNS = Counter("vp_turns_total", "Bot turns handled, by outcome", ["service", "outcome"])
NATS_PERMISSION_DENIED = Counter(
    "vp_nats_permission_denied_total",
    "Publishes and subscriptions the NATS server refused for this service's user, by operation",
    ["service", "operation", "stage"],
)


def stage_of(subject: str) -> str:
    """Low-cardinality label for a subject: the subject without its call id token."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[1] == "call":
        return ".".join(parts[3:])
    return ".".join(parts[:3])
