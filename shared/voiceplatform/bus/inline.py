"""Inline delivery: a subscription's messages handled as they are read, with no task woken for each.

A plain subscription hands each message to a task of its own through a queue: a future, a wake-up
and a pass of the event loop per message, 3-4 µs of CPU each on this project's machines. Audio is
50 messages a second per call to vad and to asr, so that was a tenth of their CPU. An inline
handler is a plain function called as the message is read (by nats-py's read loop, or the memory
broker's delivery), in the subscription's own context (log context does not leak between calls).

It returns None when it is done, or an awaitable when it has to wait (a lock another coroutine
holds, events to publish): that runs in a task, and the messages read meanwhile wait behind it. So
the bus's rule holds: a subscription's messages are handled one at a time, in order. A handler
that cannot wait cannot block the read loop on I/O either; it only costs its own CPU.

Decoding and failures are contained as ``dispatch`` contains them. Messages that pile up behind an
awaitable (``MAX_BACKLOG``: 40 s of audio) are dropped and counted as ``slow_consumer``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import deque
from collections.abc import Awaitable

import structlog

from voiceplatform import metrics
from voiceplatform.bus.base import Envelope, InlineHandler, decoded, handler_failed
from voiceplatform.wire import Message

log = structlog.get_logger("voiceplatform.bus")

MAX_BACKLOG = 2000

_Pending = tuple[Awaitable[None], str, Message]  # what a handler left to wait for, and its message


class InlineDelivery:
    """One inline subscription's handler, its backlog and the task that works it off."""

    def __init__(self, service: str, handler: InlineHandler) -> None:
        self.service = service
        self._handler = handler
        # a copy per subscription, as a task per subscription had: the handler's context is its own
        self._context = contextvars.copy_context()
        self._backlog: deque[tuple[str, bytes]] = deque()
        self._waiting: asyncio.Task[None] | None = None  # the awaitable a message left, then the backlog
        self._rest: Awaitable[None] | None = None  # the first awaitable that task was given
        self._closed = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Messages read but not yet handled (waiting behind an awaitable)."""
        return len(self._backlog)

    def deliver(self, subject: str, data: bytes) -> None:
        """One message as it is read; never raises (it runs inside the bus's read loop)."""
        if self._closed:
            return
        if self._waiting is not None:
            if len(self._backlog) >= MAX_BACKLOG:
                self.dropped += 1
                stage = metrics.stage_of(subject)
                metrics.MESSAGES_DROPPED.labels(self.service, stage, "slow_consumer").inc()
                return
            self._backlog.append((subject, data))
            return
        pending = self._context.run(self._handle, subject, data)
        if pending is not None:
            loop = asyncio.get_running_loop()
            self._waiting = loop.create_task(self._work_off(pending), context=self._context)
            self._rest = pending[0]

    def _handle(self, subject: str, data: bytes) -> _Pending | None:
        msg = decoded(self.service, subject, data)
        if msg is None:
            return None
        try:
            rest = self._handler(Envelope(subject, msg))
        except Exception:
            handler_failed(self.service, subject, msg)
            return None
        return None if rest is None else (rest, subject, msg)

    async def _work_off(self, pending: _Pending | None) -> None:
        try:
            while pending is not None:
                rest, subject, msg = pending
                try:
                    await rest
                except Exception:
                    handler_failed(self.service, subject, msg)
                pending = None
                while pending is None and self._backlog and not self._closed:
                    pending = self._handle(*self._backlog.popleft())
        finally:
            self._waiting = self._rest = None

    async def join(self) -> None:
        """Until what was read has been handled (a drain)."""
        while (task := self._waiting) is not None and not task.done():
            await asyncio.wait({task})

    async def close(self) -> None:
        """Handle nothing more; what is waiting is cancelled, as a plain subscription's task is."""
        self._closed = True
        self._backlog.clear()
        task, rest = self._waiting, self._rest
        if task is asyncio.current_task():
            return  # closed by its own handler: it ends as that handler returns (nothing more is read)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if inspect.iscoroutine(rest):
            rest.close()  # cancelled before its task ran it: closed, not left "never awaited"
        self._waiting = self._rest = None
