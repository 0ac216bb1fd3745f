"""Live call events for the console: the public call events (``call_events.>``, published by the
recorders' NATS store once an event is in the stream) fanned out to ``GET /live`` as server-sent
events.

Every recorder instance subscribes on its own (core NATS, no queue group), so a console connected to
any instance sees every call, whichever instance recorded it. A client that reads slower than events
come loses the oldest ones (bounded queue) and is told so (``event: dropped``); the console then
reloads its list. Personal data is taken out for the read-only role exactly as in the rest of the
API (``redact_public``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voiceplatform import subjects
from vp_recorder.api_auth import TURN_TEXT_FIELDS, Role

log = structlog.get_logger("vp_recorder.live")

QUEUE_EVENTS = 1000
KEEPALIVE_S = 15.0
# public event fields that are personal data: the caller's number and what was said
_PERSONAL = {
    "call.started": ("caller",),
    "turn.completed": TURN_TEXT_FIELDS,
    "barge_in": ("played_text",),
    "call.dialed": ("number",),
    "call.amd": ("words",),
}


def redact_public(event: dict[str, Any], role: Role) -> dict[str, Any]:
    if role == "operator":
        return event
    data = dict(event.get("data") or {})
    for name in _PERSONAL.get(str(event.get("type")), ()):
        data.pop(name, None)
    return {**event, "data": data}


class _Listener:
    def __init__(self) -> None:
        # None: the recorder is stopping, the stream ends (an open response would hold up the
        # HTTP server's shutdown)
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_EVENTS)
        self.dropped = 0

    def put(self, event: dict[str, Any] | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest goes: a slow console must not hold memory
            self.dropped += 1
        self.queue.put_nowait(event)


class LiveEvents:
    def __init__(self) -> None:
        self._listeners: set[_Listener] = set()
        self._sub: Subscription | None = None
        self._stopped = False

    @property
    def listening(self) -> int:
        return len(self._listeners)

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe(subjects.ALL_CALL_EVENTS, cb=self._on_event)

    async def stop(self) -> None:
        self._stopped = True
        for listener in self._listeners:
            listener.put(None)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        if not self._listeners:
            return
        try:
            event = json.loads(msg.data)
        except (ValueError, UnicodeDecodeError):
            log.warning("recorder.live_bad_event", subject=msg.subject)
            return
        if not isinstance(event, dict):
            return
        self.publish(event)

    def publish(self, event: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener.put(event)

    async def stream(self, role: Role) -> AsyncIterator[bytes]:
        """Server-sent events for one client, until it goes away."""
        listener = _Listener()
        self._listeners.add(listener)
        try:
            yield b"retry: 2000\n: connected\n\n"
            while not self._stopped:
                try:
                    event = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is None:
                    return
                if listener.dropped:
                    yield f"event: dropped\ndata: {listener.dropped}\n\n".encode()
                    listener.dropped = 0
                text = json.dumps(redact_public(event, role), ensure_ascii=False, separators=(",", ":"))
                yield f"event: call_event\nid: {event.get('id', '')}\ndata: {text}\n\n".encode()
        finally:
            self._listeners.discard(listener)
