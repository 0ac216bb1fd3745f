"""One durable JetStream consumer per store: fetch a batch, write it, then ack.

Nothing is acked before its store has it, so a recorder killed mid-batch loses nothing (the batch
comes again, and stores write idempotently). A store that is down keeps its batch, reconnects with
back-off and tells the server it is still working on the batch (so it is not handed to another
recorder meanwhile); the other stores have their own consumers and go on. Malformed messages and
events a store rejects are parked (stream ``VP_PARKED``), counted and terminated, never retried
forever and never crashing the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Literal

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from voiceplatform import subjects
from voiceplatform.bus.jetstream import DurableConsumer, publish_parked, stream_sequence
from voiceplatform.logging import bind_call
from voiceplatform.wire import WireError, decode
from vp_recorder.ledger import CallLedger
from vp_recorder.metrics import BACKLOG, LAG, PARKED, STORE_UP, STORE_WRITES
from vp_recorder.stored import Store, StoredEvent

log = structlog.get_logger("vp_recorder.consumer")

StoreState = Literal["connecting", "up", "down", "stopped"]
FETCH_TIMEOUT_S = 0.5
BACKLOG_EVERY_S = 2.0


class Backoff:
    """Doubling delay with jitter, reset after a success."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.min_s * 2.0**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempt = 0


class Parker:
    """Keeps what could not be recorded, once per stream message however many consumers park it."""

    def __init__(self, js: JetStreamContext, source_stream: str) -> None:
        self._js = js
        self._source_stream = source_stream

    async def park(self, msg: Msg, consumer: str, reason: str, detail: str) -> None:
        seq = stream_sequence(msg)
        await publish_parked(
            self._js,
            subjects.parked("recorder"),
            msg.data,
            dedupe_id=f"{self._source_stream}:{seq}",
            headers={
                "Vp-Reason": reason,
                "Vp-Subject": msg.subject,
                "Vp-Stream-Seq": str(seq),
                "Vp-Detail": detail.replace("\n", " ")[:300],
            },
        )
        PARKED.labels(consumer, reason).inc()
        log.warning("recorder.parked", store=consumer, reason=reason, subject=msg.subject, seq=seq)


class StoreConsumer:
    def __init__(
        self,
        store: Store,
        source: DurableConsumer,
        parker: Parker,
        batch_max: int,
        retry_min_s: float,
        retry_max_s: float,
        ledger: CallLedger | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self.store = store
        self.linger_s = linger_s
        self.ledger = ledger  # told every message fetched, so views of a call need no read-back
        self.source = source
        self.parker = parker
        self.batch_max = batch_max
        self.backoff = Backoff(retry_min_s, retry_max_s)
        self.state: StoreState = "connecting"
        self.written = 0
        self.parked = 0
        self.batches = 0
        self.backlog = -1
        self.last_error = ""
        self._stopping = False
        self._busy = False  # a fetched batch is being written (stop lets it finish)
        self._fetching = False  # a pull request is out (stop lets it return)
        self._task: asyncio.Task[None] | None = None
        self._backlog_at = 0.0

    @property
    def name(self) -> str:
        return self.store.name

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"recorder-{self.name}")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.source.start()
                self.backoff.reset()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # JetStream not reachable yet
                log.warning("recorder.consumer_start_failed", store=self.name, error=repr(exc)[:200])
                await asyncio.sleep(self.backoff.next_delay())
        await self._connect(batch=[])
        while not self._stopping:
            try:
                self._fetching = True
                try:
                    msgs = await self.source.fetch(self.batch_max, FETCH_TIMEOUT_S, self.linger_s)
                finally:
                    self._fetching = False
                if msgs:
                    self._busy = True
                    try:
                        await self._handle(msgs)
                    finally:
                        self._busy = False
                await self._update_backlog()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # NATS reconnecting or parking refused: what is unacked comes again after ack_wait
                log.warning("recorder.batch_failed", store=self.name, error=repr(exc)[:200])
                await asyncio.sleep(self.backoff.next_delay())

    async def _handle(self, msgs: list[Msg]) -> None:
        events: list[StoredEvent] = []
        raw_of: dict[int, Msg] = {}
        for raw in msgs:
            try:
                message = decode(raw.data)
            except WireError as exc:
                if self.ledger is not None:
                    self.ledger.note(stream_sequence(raw), None, raw.data)
                await self._park(raw, exc.reason, exc.detail)
                continue
            event = StoredEvent(stream_sequence(raw), raw.subject, message)
            if self.ledger is not None:
                self.ledger.note(event.seq, event, raw.data)
            events.append(event)
            raw_of[event.seq] = raw
        accepted = [e for e in events if self.store.accepts(e.message)]
        if accepted:
            rejected = await self._write(accepted, list(raw_of.values()))
            for event in rejected:
                raw_of.pop(event.seq)
        for raw in raw_of.values():
            await raw.ack()
        self.batches += 1
        if accepted:
            LAG.labels(self.name).set(max(0.0, time.time() - accepted[-1].message.ts_ms / 1000))

    async def _write(self, events: list[StoredEvent], batch: list[Msg]) -> list[StoredEvent]:
        """Write until the store has every event it does not reject; return the rejected ones."""
        try:
            await self._write_until_stored(events, batch)
        except _Rejected:
            pass
        else:
            return []
        # the store refused something in the batch: find it by writing one event at a time
        rejected: list[StoredEvent] = []
        for event in events:
            try:
                await self._write_until_stored([event], batch)
            except _Rejected as exc:
                rejected.append(event)
                await self._park(batch_msg(batch, event.seq), "rejected", exc.detail)
        return rejected

    async def _write_until_stored(self, events: list[StoredEvent], batch: list[Msg]) -> None:
        while True:
            try:
                await self.store.write(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                STORE_WRITES.labels(self.name, "failed").inc(len(events))
                if not self.store.is_transient(exc):
                    with bind_call(call_id=events[0].call_id):
                        log.error("recorder.write_rejected", store=self.name, error=repr(exc)[:300])
                    raise _Rejected(repr(exc)[:300]) from exc
                self._mark_down(exc)
                # a store that reconnects at once (or never really disconnects) must not spin
                await asyncio.sleep(self.backoff.next_delay())
                await self._connect(batch)
                continue
            self.backoff.reset()
            self.written += len(events)
            STORE_WRITES.labels(self.name, "ok").inc(len(events))
            return

    async def _connect(self, batch: list[Msg]) -> None:
        """Connect, retrying with back-off; meanwhile keep the batch ours (``in_progress``)."""
        touched = time.monotonic()
        while True:
            try:
                await self.store.connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_down(exc)
                with contextlib.suppress(Exception):
                    await self.store.close()
                await asyncio.sleep(self.backoff.next_delay())
                if batch and time.monotonic() - touched > self.source.ack_wait_s / 3:
                    touched = time.monotonic()
                    for raw in batch:
                        with contextlib.suppress(Exception):
                            await raw.in_progress()
                continue
            if self.state != "up":
                log.info("recorder.store_up", store=self.name, attempts=self.backoff.attempt + 1)
            self.state = "up"
            self.last_error = ""
            STORE_UP.labels(self.name).set(1)
            return

    def _mark_down(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__
        if self.state in ("up", "connecting"):
            # once per outage; the retries after it are quiet
            log.warning("recorder.store_down", store=self.name, error=repr(exc)[:300])
        self.state = "down"
        STORE_UP.labels(self.name).set(0)

    async def _park(self, raw: Msg, reason: str, detail: str) -> None:
        # parking must itself succeed before the message is dropped: if JetStream refuses, the
        # message stays unacked and comes again
        await self.parker.park(raw, self.name, reason, detail)
        self.parked += 1
        await raw.term()

    async def _update_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_EVERY_S:
            return
        self._backlog_at = now
        with contextlib.suppress(Exception):
            self.backlog = await self.source.pending()
            BACKLOG.labels(self.name).set(self.backlog)

    async def caught_up(self) -> bool:
        """True when every event in the stream so far is written (or parked) by this store."""
        self.backlog = await self.source.pending()
        return self.backlog == 0

    async def stop(self, timeout_s: float) -> None:
        """Finish the batch in hand (up to ``timeout_s``), then stop; what is unacked comes again."""
        self._stopping = True
        # never cancel a fetch: the server may already have delivered its messages, which would
        # then sit unacked until ack_wait and come back after later events. The fetch ends within
        # FETCH_TIMEOUT_S and what it brought is written before the loop sees _stopping.
        if self._task is not None and not (self._busy or self._fetching):
            self._task.cancel()  # sleeping in a back-off or connecting with nothing in hand
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.warning("recorder.stop_timeout", store=self.name)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                log.error("recorder.consumer_failed", store=self.name, error=repr(exc)[:300])
            self._task = None
        await self.source.stop()
        with contextlib.suppress(Exception):
            await self.store.close()
        self.state = "stopped"
        STORE_UP.labels(self.name).set(0)

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "written": self.written,
            "parked": self.parked,
            "backlog": self.backlog,
            # the subjects its consumer reads (all: "*"; an older NATS gives every store all), once
            # it has reached the server
            "subjects": list(self.source.filtered or ["*"]) if self.source.started else [],
            **({"error": self.last_error} if self.last_error else {}),
        }


class _Rejected(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def batch_msg(batch: list[Msg], seq: int) -> Msg:
    for raw in batch:
        if stream_sequence(raw) == seq:
            return raw
    raise KeyError(seq)
