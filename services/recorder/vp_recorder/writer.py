"""One async writer per store: a bounded queue, in-order writes, reconnect with back-off.

A slow or dead store fills its own queue and nothing else: the subscription handlers only enqueue,
so the bus and the other stores keep going. A write that fails because the connection is gone is
retried (after a reconnect) until it succeeds; a write the store rejects is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from voiceplatform.logging import bind_call
from voiceplatform.wire import Message
from vp_recorder.metrics import QUEUE_DEPTH, STORE_DROPPED, STORE_UP, STORE_WRITES

log = structlog.get_logger("vp_recorder.writer")

StoreState = Literal["connecting", "up", "down", "stopped"]


@dataclass(frozen=True, slots=True)
class Record:
    """An event to store; ``public`` is its public JSON event when one is to be published."""

    message: Message
    public: bytes | None = None


class Store(Protocol):
    name: str

    def accepts(self, message: Message) -> bool: ...
    async def connect(self) -> None: ...
    async def write(self, record: Record) -> None: ...
    async def close(self) -> None: ...
    def is_transient(self, exc: BaseException) -> bool: ...


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


class StoreWriter:
    def __init__(self, store: Store, queue_max: int, retry_min_s: float, retry_max_s: float) -> None:
        self.store = store
        self.queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=queue_max)
        self.state: StoreState = "connecting"
        self.backoff = Backoff(retry_min_s, retry_max_s)
        self.written = 0
        self.rejected = 0
        self.dropped = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.store.name

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"recorder-{self.name}-writer")

    def submit(self, record: Record) -> bool:
        """Enqueue without waiting; False (and counted) when the queue is full."""
        if not self.store.accepts(record.message):
            return False
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            STORE_DROPPED.labels(self.name, "queue_full").inc()
            return False
        QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())
        return True

    async def _run(self) -> None:
        await self._connect()
        while True:
            record = await self.queue.get()
            try:
                await self._write_until_done(record)
            finally:
                self.queue.task_done()
                QUEUE_DEPTH.labels(self.name).set(self.queue.qsize())

    async def _write_until_done(self, record: Record) -> None:
        msg = record.message
        while True:
            try:
                await self.store.write(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                STORE_WRITES.labels(self.name, "failed").inc()
                if self.store.is_transient(exc):
                    self._mark_down(exc)
                    await self._connect()
                    continue
                self.rejected += 1
                STORE_DROPPED.labels(self.name, "rejected").inc()
                with bind_call(call_id=msg.call_id):
                    log.error(
                        "recorder.write_rejected", store=self.name, type=msg.type_name, error=repr(exc)[:300]
                    )
                return
            self.written += 1
            STORE_WRITES.labels(self.name, "ok").inc()
            return

    async def _connect(self) -> None:
        """Connect, retrying with back-off until it works (cancellation stops it)."""
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
                continue
            if self.state != "up":
                log.info("recorder.store_up", store=self.name, attempts=self.backoff.attempt + 1)
            self.state = "up"
            self.last_error = ""
            self.backoff.reset()
            STORE_UP.labels(self.name).set(1)
            return

    def _mark_down(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__
        if self.state in ("up", "connecting"):
            # once per outage; the retries after it are quiet
            log.warning("recorder.store_down", store=self.name, error=repr(exc)[:300])
        self.state = "down"
        STORE_UP.labels(self.name).set(0)

    async def flush(self, within_s: float) -> bool:
        """Wait until every queued event is written; False when ``within_s`` passed first."""
        try:
            await asyncio.wait_for(self.queue.join(), within_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        lost = self.queue.qsize()
        if lost:
            STORE_DROPPED.labels(self.name, "shutdown").inc(lost)
            log.warning("recorder.events_not_written", store=self.name, events=lost)
        with contextlib.suppress(Exception):
            await self.store.close()
        self.state = "stopped"
        STORE_UP.labels(self.name).set(0)

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "queued": self.queue.qsize(),
            "written": self.written,
            "rejected": self.rejected,
            "dropped": self.dropped,
            **({"error": self.last_error} if self.last_error else {}),
        }
