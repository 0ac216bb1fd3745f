"""The recorder: persists call events to PostgreSQL and Redis and republishes public call events.

Handlers only enqueue (one writer queue per store), so recording never slows a call down and a slow
or dead store does not hold the other back. Public events go out on NATS ``call_events.<type>`` at
once and on the Redis channel ``call_events`` right after the Redis state they describe is written.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import structlog
from starlette.applications import Starlette

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.logging import bind_call
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    Message,
    PlaybackStarted,
    PromptSwitched,
    StageError,
    TurnMetrics,
)
from vp_recorder.events import encode_public, public_event
from vp_recorder.metrics import EVENTS, PUBLIC_EVENTS, SERVICE
from vp_recorder.settings import RecorderSettings
from vp_recorder.stores.postgres import PostgresStore
from vp_recorder.stores.redis import RedisStore
from vp_recorder.writer import Record, Store, StoreWriter

log = structlog.get_logger("vp_recorder.app")

RECORDED_TYPES = (
    CallStarted,
    CallEnded,
    TurnMetrics,
    PromptSwitched,
    StageError,
    PlaybackStarted,
    AsrFinal,
    LlmDone,
    ControlInterrupt,
)
SUBSCRIBED_SUBJECTS = (subjects.ANY_LIFECYCLE, subjects.ANY_ASR, subjects.ANY_LLM_DONE, subjects.ANY_CONTROL)
# public events already sent, so a redelivered message is not announced twice
_SEEN_MAX = 4096


class RecorderService:
    name = SERVICE

    def __init__(self, settings: RecorderSettings, stores: list[Store] | None = None) -> None:
        self.settings = settings
        if stores is None:
            stores = [
                PostgresStore(settings.postgres_dsn.get_secret_value(), settings.postgres_schema),
                RedisStore(
                    settings.redis_url.get_secret_value(), settings.redis_ttl_s, settings.history_scan
                ),
            ]
        self.writers = [
            StoreWriter(
                store, settings.store_queue_max, settings.store_retry_min_s, settings.store_retry_max_s
            )
            for store in stores
        ]
        self.events_received = 0
        self.events_ignored = 0
        self._bus: Bus | None = None
        self._subs: list[Subscription] = []
        self._accepting = False
        self._public_seen: OrderedDict[tuple[str, str, str, int], None] = OrderedDict()

    def writer(self, store_name: str) -> StoreWriter:
        for writer in self.writers:
            if writer.name == store_name:
                return writer
        raise KeyError(store_name)

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        if self.settings.mongo_uri is None:
            log.info("recorder.mongo_disabled")
        else:
            log.warning("recorder.mongo_not_implemented")
        for writer in self.writers:
            writer.start()
        group = subjects.queue_group(SERVICE)
        for subject in SUBSCRIBED_SUBJECTS:
            self._subs.append(await bus.subscribe(subject, self._on_event, queue=group))
        self._accepting = True

    async def _on_event(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, RECORDED_TYPES):
            self.events_ignored += 1  # e.g. control.hangup on the control subject
            return None
        self.events_received += 1
        EVENTS.labels(msg.type_name).inc()
        with bind_call(call_id=msg.call_id, turn_id=getattr(msg, "turn_id", "")):
            if isinstance(msg, StageError):
                log.warning("recorder.stage_error", stage=msg.stage, kind=msg.kind, retryable=msg.retryable)
            elif isinstance(msg, CallStarted | CallEnded):
                log.info("recorder.call_event", type=msg.type_name)
            public = await self._publish_public(msg)
            record = Record(msg, public)
            for writer in self.writers:
                writer.submit(record)
        return None

    async def _publish_public(self, msg: Message) -> bytes | None:
        event = public_event(msg)
        if event is None:
            return None
        key = (msg.type_name, msg.call_id, str(getattr(msg, "turn_id", "")), msg.ts_ms)
        if key in self._public_seen:
            return None
        self._public_seen[key] = None
        if len(self._public_seen) > _SEEN_MAX:
            self._public_seen.popitem(last=False)
        payload: bytes = encode_public(event)
        assert self._bus is not None
        try:
            await self._bus.publish_bytes(subjects.call_event(event["type"]), payload)
        except Exception as exc:
            log.warning("recorder.public_publish_failed", type=event["type"], error=type(exc).__name__)
        PUBLIC_EVENTS.labels(event["type"]).inc()
        return payload

    async def drain(self, timeout: float) -> None:
        """Stop taking events, write what is queued (up to ``timeout``), then close the stores."""
        self._accepting = False
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        per_writer = timeout / max(1, len(self.writers))
        for writer in self.writers:
            if not await writer.flush(per_writer):
                log.warning("recorder.flush_timeout", store=writer.name, queued=writer.queue.qsize())
        for writer in self.writers:
            await writer.stop()
        log.info("recorder.drained", events=self.events_received)

    def ready(self) -> bool:
        # stores that are down do not make the recorder unready: it queues and reconnects
        return self._accepting

    def stores_up(self) -> dict[str, bool]:
        return {writer.name: writer.state == "up" for writer in self.writers}

    def health(self) -> dict[str, Any]:
        stores: dict[str, Any] = {writer.name: writer.health() for writer in self.writers}
        stores["mongo"] = {"state": "disabled" if self.settings.mongo_uri is None else "not_implemented"}
        return {
            "instance_id": self.settings.instance_id,
            "stores": stores,
            "events_received": self.events_received,
            "events_ignored": self.events_ignored,
        }

    def asgi_app(self) -> Starlette | None:
        return None
