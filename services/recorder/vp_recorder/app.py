"""The recorder: every call event from the JetStream stream into each store, and the public events.

Gateways and workers publish on core NATS and never wait for the recorder or a database: the
stream ``VP_CALL_EVENTS`` captures their events on the server. Each store (Postgres, Redis, the
public NATS events, the JSON call logs + Telegram reports, MongoDB when configured) reads the
stream through its own durable consumer and acks only what it has written, so a store that is
down holds back nothing but itself and catches up when it returns, and a recorder killed at any
moment loses nothing: whatever it had not acked is delivered again (stores write idempotently).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.applications import Starlette

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.bus.jetstream import DurableConsumer, StreamSpec, ensure_stream
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.unanswered import start_retry_s
from vp_recorder.api import RecorderApi, build_api
from vp_recorder.console_routes import console_routes
from vp_recorder.consumer import Parker, StoreConsumer
from vp_recorder.ledger import CallLedger
from vp_recorder.live import LiveEvents
from vp_recorder.metrics import SERVICE
from vp_recorder.orphans import OrphanSweeper
from vp_recorder.public import NatsEventsStore, PublicEvents
from vp_recorder.reader import JetStreamCallReader
from vp_recorder.recordings import RecordingSweeper
from vp_recorder.reports.telegram import TelegramReporter
from vp_recorder.settings import RecorderSettings
from vp_recorder.stored import CallEventReader, Store
from vp_recorder.stores.mongo import MongoStore
from vp_recorder.stores.postgres import PostgresStore
from vp_recorder.stores.redis import RedisStore
from vp_recorder.stores.reports import ReportsStore

log = structlog.get_logger("vp_recorder.app")


def call_events_stream(settings: RecorderSettings) -> StreamSpec:
    return StreamSpec(
        name=settings.stream_name,
        subjects=subjects.RECORDED,
        max_age_s=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        replicas=settings.js_replicas,
    )


def parked_stream(settings: RecorderSettings) -> StreamSpec:
    # the window must outlast a store outage: every consumer parks the same bad message, once stored
    return StreamSpec(
        name=settings.parked_stream_name,
        subjects=(subjects.ALL_PARKED,),
        max_age_s=settings.parked_max_age_s,
        duplicate_window_s=min(settings.parked_max_age_s, 24 * 3600),
        replicas=settings.js_replicas,
    )


def mongo_configured(settings: RecorderSettings) -> bool:
    # an empty MONGO_URI (compose's ${MONGO_URI:-}) means "no MongoDB", like an unset one
    return settings.mongo_uri is not None and bool(settings.mongo_uri.get_secret_value())


class RecorderService:
    name = SERVICE

    def __init__(self, settings: RecorderSettings) -> None:
        self.settings = settings
        self.consumers: list[StoreConsumer] = []
        self._accepting = False
        self.sweeper: OrphanSweeper | None = None
        self.recording_sweeper: RecordingSweeper | None = None
        self.live = LiveEvents()
        self.ledger: CallLedger | None = None
        # made before start(): the runner builds the HTTP app before it starts the service
        self.api = RecorderApi(settings)

    def build_stores(self, bus: NatsBus, reader: CallEventReader) -> list[Store]:
        s = self.settings
        public = PublicEvents(reader)
        stores: list[Store] = [
            PostgresStore(s.postgres_dsn.get_secret_value(), s.postgres_schema, s.robots_dir),
            RedisStore(s.redis_url.get_secret_value(), public, s.redis_ttl_s, s.history_scan),
            NatsEventsStore(bus.client, public),
        ]
        if s.call_logs:
            telegram = None
            if s.tg_token is not None and s.tg_token.get_secret_value() and s.tg_chat_id:
                telegram = TelegramReporter(s.tg_token.get_secret_value(), s.tg_chat_id, s.tg_api_url)
            stores.append(
                ReportsStore(
                    s.call_logs_dir or s.robots_dir,
                    reader,
                    telegram,
                    retry_min_s=s.store_retry_min_s,
                    retry_max_s=60.0,
                )
            )
        if mongo_configured(s):
            assert s.mongo_uri is not None
            stores.append(MongoStore(s.mongo_uri.get_secret_value(), s.mongo_database, reader))
        return stores

    def store_consumer(self, name: str) -> StoreConsumer:
        for consumer in self.consumers:
            if consumer.name == name:
                return consumer
        raise KeyError(name)

    async def start(self, bus: Bus) -> None:
        if not isinstance(bus, NatsBus):
            raise TypeError("the recorder needs NATS with JetStream (a NatsBus)")
        s = self.settings
        js = bus.jetstream()
        stream = await ensure_stream(js, call_events_stream(s))
        if stream != s.stream_name:
            log.warning("recorder.stream_adopted", configured=s.stream_name, stream=stream)
            self.settings = s = s.model_copy(update={"stream_name": stream})
        await ensure_stream(js, parked_stream(s))
        if not mongo_configured(s):
            log.info("recorder.mongo_disabled", why="MONGO_URI is not set: no transcripts in MongoDB")
        parker = Parker(js, s.stream_name)
        reader = JetStreamCallReader(js, s.stream_name)
        self.api.reader = reader
        # the stores' views of a call come from what the consumers fetched, read back only if partial
        self.ledger = CallLedger(reader, max_events=s.call_memory_events)
        for store in self.build_stores(bus, self.ledger):
            source = DurableConsumer(
                js,
                s.stream_name,
                f"{s.durable_prefix}_{store.name}",
                filter_subjects=store.stream_subjects,
                ack_wait_s=s.ack_wait_s,
                start_retry_s=start_retry_s(s.js_replicas),
            )
            consumer = StoreConsumer(
                store,
                source,
                parker,
                s.batch_max,
                s.store_retry_min_s,
                s.store_retry_max_s,
                self.ledger,
                linger_s=s.batch_linger_s if store.live else s.archive_linger_s,
            )
            self.consumers.append(consumer)
            consumer.start()
        if s.orphan_after_s > 0:
            self.sweeper = OrphanSweeper(
                bus, js, s.stream_name, self.api.run, s.orphan_after_s, s.orphan_sweep_every_s
            )
            await self.sweeper.start()
        await self.live.start(bus.client)
        self.api.live = self.live
        if s.recording_retention_days > 0:
            self.recording_sweeper = RecordingSweeper(
                self.api.run, self.api.files, s.recording_retention_days, s.recording_sweep_every_s
            )
            self.recording_sweeper.start()
        self._accepting = True
        log.info("recorder.started", stores=[c.name for c in self.consumers], stream=s.stream_name)

    async def caught_up(self) -> bool:
        """Every store has written (or parked) every event in the stream so far."""
        return all([await c.caught_up() for c in self.consumers])

    async def drain(self, timeout: float) -> None:
        """Finish the batches in hand, then stop; anything unacked is delivered again later."""
        self._accepting = False
        if self.ledger is not None:
            self.ledger.waiting = False  # the Postgres consumer is stopping too: read calls back
        if self.sweeper is not None:
            await self.sweeper.stop()
        if self.recording_sweeper is not None:
            await self.recording_sweeper.stop()
        await self.live.stop()
        await asyncio.gather(*(consumer.stop(timeout) for consumer in self.consumers))
        await self.api.aclose()
        log.info("recorder.drained", written={c.name: c.written for c in self.consumers})

    def ready(self) -> bool:
        # stores that are down do not make the recorder unready: events wait in the stream
        return self._accepting

    def stores_up(self) -> dict[str, bool]:
        return {c.name: c.state == "up" for c in self.consumers}

    def health(self) -> dict[str, Any]:
        stores: dict[str, Any] = {c.name: c.health() for c in self.consumers}
        if not mongo_configured(self.settings):
            stores["mongo"] = {"state": "disabled"}
        return {
            "instance_id": self.settings.instance_id,
            "stream": self.settings.stream_name,
            "stores": stores,
            # calls read back from the stream for a view (0 while one recorder has them all)
            "call_read_backs": self.ledger.read_backs if self.ledger is not None else 0,
        }

    def asgi_app(self) -> Starlette | None:
        return build_api(self.api, console_routes(self.api))
