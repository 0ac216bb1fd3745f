"""The bus over a real NATS server (nats-py), with JetStream KV for shared per-call state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue as NatsKv
from prometheus_client import Counter

from voiceplatform.bus.auth import note_permission_denied
from voiceplatform.bus.base import (
    BusError,
    Handler,
    InlineHandler,
    KvConflict,
    NoResponders,
    RequestTimeout,
    dispatch,
)
from voiceplatform.bus.inline import InlineDelivery
from voiceplatform.bus.memory import subject_matches
from voiceplatform.bus.streams import CALL_EVENTS, WORK
from voiceplatform.bus.unanswered import UNANSWERED, retry_unanswered
from voiceplatform.wire import Message, decode, encode

log = structlog.get_logger("voiceplatform.bus")
_T = TypeVar("_T")

# On a cluster (js_replicas > 1) a stream whose leader node died stores nothing until its replicas
# elect another (4-9 s in nats-server), and a core publish to its subjects is dropped unseen. So
# there, what the platform's streams capture is published with a JetStream ack, retried this long.
STREAM_SUBJECTS = (*CALL_EVENTS.subjects, *WORK.subjects)


@functools.lru_cache(maxsize=8192)
def stream_captured(subject: str) -> bool:
    """A stream stores what is published on ``subject`` (remembered: audio frames ask 50 times a second)."""
    return any(subject_matches(pattern, subject) for pattern in STREAM_SUBJECTS)


ACKED_PUBLISH_S = 20.0
ACKED_PUBLISH_FAILED = Counter(
    "vp_bus_acked_publish_failed_total",
    "Stream messages no stream acknowledged within the retry window (sent without an ack instead)",
    ["service"],
)


class _NatsSubscription:
    def __init__(self, sub: NatsSubscription, inline: InlineDelivery | None = None) -> None:
        self._sub = sub
        self._inline = inline

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.ConnectionClosedError:
            pass
        except nats.errors.BadSubscriptionError:
            pass
        if self._inline is not None:
            await self._inline.close()


class _InlineQueue:
    """In place of a nats-py subscription's pending queue: nats-py's read loop puts each message
    here, and it is handled there and then. On a subscription without a callback, nats-py 2.x uses
    only ``put_nowait``, ``qsize``, ``empty`` and ``join`` of it (tests/shared/test_bus_inline.py
    runs the real client)."""

    def __init__(self, delivery: InlineDelivery) -> None:
        self._delivery = delivery

    def put_nowait(self, msg: Msg) -> None:
        self._delivery.deliver(msg.subject, msg.data)

    def qsize(self) -> int:
        return self._delivery.pending

    def empty(self) -> bool:
        return self._delivery.pending == 0

    async def join(self) -> None:
        await self._delivery.join()


# a stream or bucket without a leader (its node died, the replicas elect another) answers nothing:
# on a cluster each attempt waits this long, and is retried until ACKED_PUBLISH_S
ATTEMPT_TIMEOUT_S = 1.0


class _NatsKeyValue:
    def __init__(self, kv: NatsKv, retry_s: float = 0.0) -> None:
        self._kv = kv
        self._retry_s = retry_s

    async def _call(self, op: Callable[[], Awaitable[_T]]) -> _T:
        return await retry_unanswered(op, self._retry_s)

    async def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._call(lambda: self._kv.get(key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return (entry.value or b"", entry.revision or 0)

    async def create(self, key: str, value: bytes) -> int:
        try:
            return int(await self._call(lambda: self._kv.create(key, value)))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as exc:
            raise KvConflict(key) from exc

    async def update(self, key: str, value: bytes, last: int) -> int:
        try:
            return int(await self._call(lambda: self._kv.update(key, value, last=last)))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as exc:
            raise KvConflict(key) from exc

    async def put(self, key: str, value: bytes) -> int:
        return int(await self._call(lambda: self._kv.put(key, value)))

    async def delete(self, key: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self._call(lambda: self._kv.delete(key))


class NatsBus:
    def __init__(self, nc: Client, service: str, js_replicas: int = 1) -> None:
        self._nc = nc
        self.service = service
        # copies of the streams and KV buckets this connection creates (ServiceSettings.js_replicas)
        self.js_replicas = js_replicas
        self._kvs: dict[str, _NatsKeyValue] = {}

    @classmethod
    async def connect(cls, url: str, service: str, js_replicas: int = 1, **options: Any) -> NatsBus:
        """``url``: one server or a comma-separated list (the nodes of a cluster; the client picks
        one at random and moves to another when it is lost)."""

        async def on_error(exc: Exception) -> None:
            if note_permission_denied(service, str(exc)):
                return
            log.warning("nats.error", error=type(exc).__name__, detail=str(exc)[:200])

        async def on_disconnect() -> None:
            log.warning("nats.disconnected")

        async def on_reconnect() -> None:
            log.info("nats.reconnected")

        nc = await nats.connect(
            servers=[u.strip() for u in url.split(",")],
            name=service,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **options,
        )
        return cls(nc, service, js_replicas)

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def client(self) -> Client:
        """The raw connection, for code that needs NATS features beyond the Bus protocol."""
        return self._nc

    def jetstream(self) -> JetStreamContext:
        """For consumers that need streams (the recorder); services on the call path do not."""
        return self._nc.jetstream()

    async def publish(self, subject: str, msg: Message, msg_id: str = "") -> None:
        if self.js_replicas > 1 and stream_captured(subject):
            await self._publish_acked(subject, encode(msg), msg_id or uuid.uuid4().hex)
            return
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await self._nc.publish(subject, encode(msg), headers=headers)

    async def _publish_acked(self, subject: str, data: bytes, msg_id: str) -> None:
        """Until a stream stored it (the id makes a retry of a stored message a no-op)."""
        headers = {"Nats-Msg-Id": msg_id}
        deadline = time.monotonic() + ACKED_PUBLISH_S
        delay = 0.2
        while True:
            try:
                await self._nc.jetstream().publish(subject, data, timeout=ATTEMPT_TIMEOUT_S, headers=headers)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                # a refusal (not a silence) will not change on retry: sent without an ack at once
                retry = isinstance(exc, UNANSWERED) and time.monotonic() < deadline
                if self._nc.is_closed or not retry:
                    ACKED_PUBLISH_FAILED.labels(self.service).inc()
                    log.warning("nats.acked_publish_failed", subject=subject, error=type(exc).__name__)
                    if not self._nc.is_closed:
                        await self._nc.publish(subject, data, headers=headers)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def publish_bytes(self, subject: str, data: bytes) -> None:
        await self._nc.publish(subject, data)

    async def subscribe(self, subject: str, handler: Handler, queue: str | None = None) -> _NatsSubscription:
        async def callback(raw: Msg) -> None:
            reply = await dispatch(self.service, raw.subject, raw.data, handler)
            if reply is not None and raw.reply:
                await self._nc.publish(raw.reply, encode(reply))

        sub = await self._nc.subscribe(subject, queue=queue or "", cb=callback)
        await self._nc.flush()  # the server knows the subscription before we return
        return _NatsSubscription(sub)

    async def subscribe_inline(self, subject: str, handler: InlineHandler) -> _NatsSubscription:
        delivery = InlineDelivery(self.service, handler)
        # no callback: nats-py starts no task and queues for an iterator, whose queue this replaces;
        # the byte limit is ours to keep (InlineDelivery's backlog), nats-py's count would only grow
        sub = await self._nc.subscribe(subject, pending_bytes_limit=0)
        sub._pending_queue = _InlineQueue(delivery)  # type: ignore[assignment]
        await self._nc.flush()
        return _NatsSubscription(sub, delivery)

    async def request(self, subject: str, msg: Message, timeout: float = 1.0) -> Message:
        try:
            raw = await self._nc.request(subject, encode(msg), timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(subject) from exc
        except nats.errors.TimeoutError as exc:
            raise RequestTimeout(subject) from exc
        return decode(raw.data)

    async def key_value(self, bucket: str, ttl_s: float = 0) -> _NatsKeyValue:
        if bucket in self._kvs:
            return self._kvs[bucket]
        clustered = self.js_replicas > 1
        js = self._nc.jetstream(timeout=ATTEMPT_TIMEOUT_S) if clustered else self._nc.jetstream()
        retry_s = ACKED_PUBLISH_S if clustered else 0.0
        try:
            kv = await retry_unanswered(lambda: js.key_value(bucket), retry_s)
        except nats.js.errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(
                    bucket=bucket, history=1, ttl=ttl_s or None, replicas=self.js_replicas
                )
            except nats.js.errors.APIError as exc:
                # another instance created it between our look-up and create
                try:
                    kv = await js.key_value(bucket)
                except nats.js.errors.BucketNotFoundError:
                    raise BusError(f"cannot create KV bucket {bucket}") from exc
        wrapped = _NatsKeyValue(kv, retry_s)
        self._kvs[bucket] = wrapped
        return wrapped

    async def drain(self) -> None:
        if not self._nc.is_closed:
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await self._nc.drain()

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.close()
