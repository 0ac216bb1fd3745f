"""Recorder metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SERVICE = "recorder"

STORE_WRITES = Counter(
    "vp_recorder_store_writes_total", "Events written by store and outcome (ok, failed)", ["store", "outcome"]
)
STORE_UP = Gauge("vp_recorder_store_up", "1 when the store is connected", ["store"])
PARKED = Counter(
    "vp_recorder_parked_total",
    "Events set aside in the parked stream, by store and reason (malformed, unknown version, rejected)",
    ["store", "reason"],
)
BACKLOG = Gauge("vp_recorder_backlog_events", "Events in the stream not yet written by the store", ["store"])
LAG = Gauge("vp_recorder_lag_seconds", "Age of the newest event the store has written", ["store"])
PUBLIC_EVENTS = Counter("vp_recorder_public_events_total", "Public call events published, by type", ["type"])
ORPHANS_CLOSED = Counter(
    "vp_recorder_orphans_closed_total", "Calls closed as gateway_lost because their gateway died"
)
