"""Recorder process settings (env prefix ``VP_``; NATS_URL, POSTGRES_DSN, REDIS_URL, MONGO_URI)."""

from __future__ import annotations

from voiceplatform.config import ServiceSettings


class RecorderSettings(ServiceSettings):
    # schema holding the recorder's tables (created when missing); tests use one per test
    postgres_schema: str = "public"
    # live call state in Redis expires this long after its last write
    redis_ttl_s: int = 1800
    # events waiting for one store; past this, new events for that store are dropped and counted
    store_queue_max: int = 10_000
    # reconnect back-off for a store that is down: doubles from min to max
    store_retry_min_s: float = 0.2
    store_retry_max_s: float = 10.0
    # how many recent history entries are searched when an entry of a turn is updated in place
    history_scan: int = 100
