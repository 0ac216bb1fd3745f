"""Bus protocol and the delivery logic both implementations share.

Semantics (identical for NATS and the in-memory twin):
- ``publish`` is fire-and-forget, at most once; subjects are literal, subscriptions may use ``*``/``>``.
  A ``msg_id`` only matters to JetStream streams (dedupe); core subscribers get every copy.
- Each subscription delivers its messages one at a time, in order, to its handler. A handler that
  does long work must hand it to a task of its own (see ``runtime.tasks``).
- A subscription with ``queue`` shares messages with the other members of that group: each message
  goes to exactly one of them.
- Bytes that do not decode into a known message are counted and logged, never raised to handlers.
- A handler may return a message: it is sent as the reply when the sender used ``request``.
- ``subscribe_inline`` keeps those rules for a plain-function handler run as each message is read
  (``bus/inline.py``): what audio takes, 50 messages a second per call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from voiceplatform import metrics
from voiceplatform.wire import Message, WireError, decode

log = structlog.get_logger("voiceplatform.bus")


class BusError(Exception):
    pass


class RequestTimeout(BusError):
    pass


class NoResponders(BusError):
    pass


class KvConflict(BusError):
    """Compare-and-set lost: the key changed (or exists) since it was read."""


@dataclass(frozen=True, slots=True)
class Envelope:
    subject: str
    message: Message


Handler = Callable[[Envelope], Awaitable[Message | None]]
# handles a message as it is read; returns what is left to wait for, if anything (bus/inline.py)
InlineHandler = Callable[[Envelope], Awaitable[None] | None]


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class KeyValue(Protocol):
    async def get(self, key: str) -> tuple[bytes, int] | None: ...
    async def create(self, key: str, value: bytes) -> int: ...
    async def update(self, key: str, value: bytes, last: int) -> int: ...
    async def put(self, key: str, value: bytes) -> int: ...
    async def delete(self, key: str) -> None: ...


class Bus(Protocol):
    service: str

    async def publish(self, subject: str, msg: Message, msg_id: str = "") -> None:
        """``msg_id`` (a ``Nats-Msg-Id`` header): a stream capturing ``subject`` keeps one copy per id."""
        ...

    async def publish_bytes(self, subject: str, data: bytes) -> None: ...
    async def subscribe(self, subject: str, handler: Handler, queue: str | None = None) -> Subscription: ...
    async def subscribe_inline(self, subject: str, handler: InlineHandler) -> Subscription:
        """For a stream of many small messages (audio): see ``bus/inline.py``. No replies."""
        ...

    async def request(self, subject: str, msg: Message, timeout: float = 1.0) -> Message: ...
    async def key_value(self, bucket: str, ttl_s: float = 0) -> KeyValue: ...
    async def drain(self) -> None: ...
    async def close(self) -> None: ...
    @property
    def connected(self) -> bool: ...


def decoded(service: str, subject: str, data: bytes) -> Message | None:
    """The message in ``data``, or None after counting and logging why it is not one."""
    try:
        return decode(data)
    except WireError as exc:
        metrics.MESSAGES_DROPPED.labels(service, metrics.stage_of(subject), exc.reason).inc()
        log.warning("bus.message_dropped", subject=subject, reason=exc.reason, detail=exc.detail[:200])
        return None


def handler_failed(service: str, subject: str, msg: Message) -> None:
    """Counts and logs a handler's exception (call from its ``except`` block)."""
    metrics.HANDLER_ERRORS.labels(service, metrics.stage_of(subject)).inc()
    log.exception("bus.handler_failed", subject=subject, type=msg.type_name, call_id=msg.call_id)


async def dispatch(service: str, subject: str, data: bytes, handler: Handler) -> Message | None:
    """Decode, call the handler, contain its failures. Returns the handler's reply, if any.

    Runs for every message (50 a second per call for audio): the metric labels are worked out
    only on the failure paths."""
    msg = decoded(service, subject, data)
    if msg is None:
        return None
    try:
        return await handler(Envelope(subject, msg))
    except Exception:
        handler_failed(service, subject, msg)
        return None
