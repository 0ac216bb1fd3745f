"""In-memory twin of ``NatsBus`` with the same semantics, for unit and service tests.

Every message is encoded and decoded exactly as on NATS, so validation and drop counting are the
same. Several ``MemoryBus`` views can share one ``MemoryBroker`` (one per simulated process).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field

from voiceplatform.bus.base import (
    Envelope,
    Handler,
    InlineHandler,
    KvConflict,
    NoResponders,
    RequestTimeout,
    dispatch,
)
from voiceplatform.bus.inline import InlineDelivery
from voiceplatform.wire import Message, decode, encode


def subject_matches(pattern: str, subject: str) -> bool:
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, tok in enumerate(p_tokens):
        if tok == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        if tok != "*" and tok != s_tokens[i]:
            return False
    return len(p_tokens) == len(s_tokens)


async def _no_handler(env: Envelope) -> None:
    """An inline subscription's (its handler is the InlineDelivery's)."""


@dataclass(eq=False)
class _MemorySubscription:
    broker: MemoryBroker
    pattern: str
    queue: str | None
    handler: Handler
    service: str
    inbox: asyncio.Queue[tuple[str, bytes, str | None]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    closed: bool = False
    inline: InlineDelivery | None = None

    def start(self) -> None:
        if self.inline is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, subject: str, data: bytes, reply_to: str | None) -> None:
        if self.inline is not None:
            # as NATS's read loop would: soon and in order, never inside the publisher's call
            asyncio.get_running_loop().call_soon(self.inline.deliver, subject, data)
        else:
            self.inbox.put_nowait((subject, data, reply_to))

    async def _run(self) -> None:
        while True:
            subject, data, reply_to = await self.inbox.get()
            try:
                reply = await dispatch(self.service, subject, data, self.handler)
                if reply is not None and reply_to:
                    self.broker.deliver(reply_to, encode(reply), None)
            finally:
                self.inbox.task_done()

    async def unsubscribe(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.broker.remove(self)
        if self.inline is not None:
            await self.inline.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def drain(self) -> None:
        self.broker.remove(self)
        if self.inline is not None:
            await asyncio.sleep(0)  # what was offered before the removal is delivered first
            await self.inline.join()
        await self.inbox.join()
        await self.unsubscribe()


class _MemoryKeyValue:
    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._rev = itertools.count(1)

    async def get(self, key: str) -> tuple[bytes, int] | None:
        return self._data.get(key)

    async def create(self, key: str, value: bytes) -> int:
        if key in self._data:
            raise KvConflict(key)
        return await self.put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        current = self._data.get(key)
        if current is None or current[1] != last:
            raise KvConflict(key)
        return await self.put(key, value)

    async def put(self, key: str, value: bytes) -> int:
        rev = next(self._rev)
        self._data[key] = (value, rev)
        return rev

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)


class MemoryBroker:
    """The shared 'server' of in-memory buses."""

    def __init__(self) -> None:
        self._subs: list[_MemorySubscription] = []
        self._kv: dict[str, _MemoryKeyValue] = {}
        self._inbox_ids = itertools.count(1)
        self._reply_waiters: dict[str, asyncio.Future[bytes]] = {}

    def add(self, sub: _MemorySubscription) -> None:
        self._subs.append(sub)

    def remove(self, sub: _MemorySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def deliver(self, subject: str, data: bytes, reply_to: str | None) -> int:
        waiter = self._reply_waiters.get(subject)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(data)
            return 1
        matched = [s for s in self._subs if subject_matches(s.pattern, subject)]
        plain = [s for s in matched if s.queue is None]
        groups: dict[str, list[_MemorySubscription]] = {}
        for s in matched:
            if s.queue is not None:
                groups.setdefault(s.queue, []).append(s)
        targets = plain + [random.choice(members) for members in groups.values()]
        for s in targets:
            s.offer(subject, data, reply_to)
        return len(targets)

    def new_inbox(self) -> str:
        return f"_INBOX.mem.{next(self._inbox_ids)}"

    def await_reply(self, inbox: str) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._reply_waiters[inbox] = fut
        return fut

    def forget_reply(self, inbox: str) -> None:
        self._reply_waiters.pop(inbox, None)

    def kv(self, bucket: str) -> _MemoryKeyValue:
        return self._kv.setdefault(bucket, _MemoryKeyValue())

    def bus(self, service: str) -> MemoryBus:
        return MemoryBus(self, service)


class MemoryBus:
    def __init__(self, broker: MemoryBroker, service: str) -> None:
        self._broker = broker
        self.service = service
        self._subs: list[_MemorySubscription] = []
        self._closed = False

    @property
    def connected(self) -> bool:
        return not self._closed

    async def publish(self, subject: str, msg: Message, msg_id: str = "") -> None:
        # no streams in memory: nothing dedupes by msg_id (the work queue is a plain queue group here)
        self._broker.deliver(subject, encode(msg), None)

    async def publish_bytes(self, subject: str, data: bytes) -> None:
        self._broker.deliver(subject, data, None)

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> _MemorySubscription:
        sub = _MemorySubscription(self._broker, subject, queue or None, handler, self.service)
        sub.start()
        self._broker.add(sub)
        self._subs.append(sub)
        return sub

    async def subscribe_inline(self, subject: str, handler: InlineHandler) -> _MemorySubscription:
        sub = _MemorySubscription(self._broker, subject, None, _no_handler, self.service)
        sub.inline = InlineDelivery(self.service, handler)
        self._broker.add(sub)
        self._subs.append(sub)
        return sub

    async def request(self, subject: str, msg: Message, timeout: float = 1.0) -> Message:
        inbox = self._broker.new_inbox()
        answer = self._broker.await_reply(inbox)
        try:
            if self._broker.deliver(subject, encode(msg), inbox) == 0:
                raise NoResponders(subject)
            try:
                data = await asyncio.wait_for(answer, timeout)
            except TimeoutError as exc:
                raise RequestTimeout(subject) from exc
        finally:
            self._broker.forget_reply(inbox)
        return decode(data)

    async def key_value(self, bucket: str, ttl_s: float = 0) -> _MemoryKeyValue:
        return self._broker.kv(bucket)

    async def drain(self) -> None:
        for sub in list(self._subs):
            await sub.drain()
        self._closed = True

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.unsubscribe()
        self._closed = True
