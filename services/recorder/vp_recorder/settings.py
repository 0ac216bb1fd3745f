"""Recorder process settings (env prefix ``VP_``; NATS_URL, POSTGRES_DSN, REDIS_URL, MONGO_URI, TG_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from voiceplatform.bus.streams import CALL_EVENTS_MAX_AGE_S, CALL_EVENTS_MAX_BYTES, CALL_EVENTS_STREAM
from voiceplatform.config import ServiceSettings


class RecorderSettings(ServiceSettings):
    # schema holding the recorder's tables (created when missing); tests use one per test
    postgres_schema: str = "public"
    mongo_database: str = "voice_platform"
    # live call state in Redis expires this long after its last write (seed contract: 30 minutes)
    redis_ttl_s: int = 1800
    # how many recent history entries are searched when an entry of a turn is updated in place
    history_scan: int = 100

    # JetStream: the stream capturing call events, and the durable consumers' name prefix (one
    # consumer per store). Events older than max_age are gone: a store down longer loses them.
    # (workers create the stream with the same defaults when they start first: bus/streams.py)
    stream_name: str = CALL_EVENTS_STREAM
    stream_max_age_s: float = CALL_EVENTS_MAX_AGE_S
    stream_max_bytes: int = CALL_EVENTS_MAX_BYTES
    parked_stream_name: str = "VP_PARKED"
    parked_max_age_s: float = 30 * 24 * 3600
    durable_prefix: str = "recorder"
    # events handed to a store at once (one Postgres transaction when catching up)
    batch_max: int = 500
    # when a fetch brings only a few events (a quiet moment, a trickle of live calls), wait this
    # long for more before writing: a batch costs each store round trips whatever its size, so
    # ten events a batch cost a tenth per event of one; 0 writes at once. This is for the stores
    # that pass events on as they happen (public events on NATS and Redis); the archives (Postgres,
    # call logs, Mongo) wait archive_linger_s, so most of a turn's events share one write
    batch_linger_s: float = 0.05
    archive_linger_s: float = 0.25
    # call events kept in memory (raw, ~0.3 kB each) so a call's summary, log and transcript are
    # built without reading the call back from the stream; calls beyond it are read back
    call_memory_events: int = 100_000
    # an event not acked this long after delivery is delivered again (to this or another recorder)
    ack_wait_s: float = 30.0

    # reconnect back-off for a store that is down: doubles from min to max
    store_retry_min_s: float = 0.2
    store_retry_max_s: float = 5.0

    # bearer tokens of the HTTP API (operator: everything; readonly: no caller numbers, no
    # transcripts); the env values win over the file `vp up` writes. None at all: the API is locked.
    api_operator_token: SecretStr | None = None
    api_readonly_token: SecretStr | None = None
    api_tokens_file: Path | None = None

    # a call whose gateway instance has announced no presence for this long (or that restarted
    # under the same id) is closed as ``gateway_lost``; 0 turns the sweeper off
    orphan_after_s: float = 10.0
    orphan_sweep_every_s: float = 1.0

    # call recordings (VP_RECORDINGS_DIR): deleted this many days after the call, marked gone in
    # PostgreSQL (recording_deletions); 0 keeps them forever. The sweeper runs every sweep period.
    recording_retention_days: float = Field(default=30.0, ge=0)
    recording_sweep_every_s: float = Field(default=3600.0, gt=0)

    # JSON call logs under <call_logs_dir or robots_dir>/<robot>/logs/
    call_logs: bool = True
    call_logs_dir: Path | None = None
    # Telegram call reports; off unless both are set
    tg_token: SecretStr | None = Field(default=None, validation_alias="TG_TOKEN")
    tg_chat_id: str | None = Field(default=None, validation_alias="TG_CHAT_ID")
    tg_api_url: str = Field(default="https://api.telegram.org", validation_alias="TG_API_URL")
