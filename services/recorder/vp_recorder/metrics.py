"""Recorder metrics (the shared ones live in ``voiceplatform.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SERVICE = "recorder"

EVENTS = Counter("vp_recorder_events_total", "Events received by the recorder, by type", ["type"])
STORE_WRITES = Counter(
    "vp_recorder_store_writes_total", "Store writes by store and outcome (ok, failed)", ["store", "outcome"]
)
STORE_DROPPED = Counter(
    "vp_recorder_store_dropped_total",
    "Events a store did not record, by store and reason (queue_full, rejected, shutdown)",
    ["store", "reason"],
)
STORE_UP = Gauge("vp_recorder_store_up", "1 when the store is connected", ["store"])
QUEUE_DEPTH = Gauge("vp_recorder_queue_depth", "Events waiting for a store", ["store"])
PUBLIC_EVENTS = Counter("vp_recorder_public_events_total", "Public call events published, by type", ["type"])
