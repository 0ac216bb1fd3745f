"""Realtime-specific metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

SERVICE = "realtime"

RECONNECTS = Counter(
    "vp_realtime_reconnects_total", "Provider sessions reopened (dropped, expired, refused)", ["provider"]
)
NOTICES = Counter(
    "vp_realtime_provider_notices_total",
    "Provider error events that left the session open",
    ["provider", "code"],
)
BARGE_INS = Counter(
    "vp_realtime_barge_ins_total", "Replies cancelled and truncated by barge-in", ["provider"]
)
