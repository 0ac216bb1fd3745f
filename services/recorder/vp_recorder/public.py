"""Public call events: the JSON payload of a stored event, and the store publishing them on NATS.

The same payload goes to NATS ``call_events.<type>`` (here) and to the Redis channel
``call_events`` (by the Redis store, after the state it describes is written). A payload is built
from the stored event only, so a redelivered event gives the same bytes and the same ``id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import nats.errors
from nats.aio.client import Client

from voiceplatform import subjects
from voiceplatform.wire import CallEnded, Message
from vp_recorder.events import encode_public, public_event
from vp_recorder.metrics import PUBLIC_EVENTS
from vp_recorder.stored import CallEventReader, StoredEvent
from vp_recorder.summary import call_summary

# payloads remembered for the other store that publishes the same event (Redis and NATS consumers
# run close behind each other): building one is most of what publishing it costs
RECENT_PAYLOADS = 4096


class PublicEvents:
    def __init__(self, reader: CallEventReader) -> None:
        self._reader = reader
        self._recent: dict[str, tuple[str, bytes]] = {}

    @staticmethod
    def has_public(message: Message) -> bool:
        return public_event(message, "") is not None

    async def payload(self, event: StoredEvent) -> tuple[str, bytes] | None:
        """(event type, JSON bytes), or None when the event has no public form."""
        if isinstance(event.message, CallEnded):  # its summary is read anew each time
            return _encoded(public_event(event.message, event.event_id, call_summary(
                await self._reader.read_call(event.call_id))))  # fmt: skip
        key = event.event_id
        if key in self._recent:
            return self._recent.pop(key)  # the other store was the last to ask for it
        found = _encoded(public_event(event.message, key))
        if found is not None:
            self._recent[key] = found
            if len(self._recent) > RECENT_PAYLOADS:
                del self._recent[next(iter(self._recent))]
        return found


def _encoded(public: dict[str, object] | None) -> tuple[str, bytes] | None:
    return None if public is None else (str(public["type"]), encode_public(public))


class NatsEventsStore:
    """Publishes public events on NATS. At least once: a crash before the ack publishes again."""

    name = "nats_events"
    live = True
    stream_subjects = (subjects.ANY_LIFECYCLE, subjects.ANY_TURN_REPORT, subjects.ANY_CONTROL)

    def __init__(self, nc: Client, public: PublicEvents) -> None:
        self._nc = nc
        self._public = public

    def accepts(self, message: Message) -> bool:
        return PublicEvents.has_public(message)

    async def connect(self) -> None:
        if not self._nc.is_connected:
            raise ConnectionError("nats not connected")

    async def write(self, events: Sequence[StoredEvent]) -> None:
        for event in events:
            found = await self._public.payload(event)
            if found is None:
                continue
            event_type, payload = found
            await self._nc.publish(subjects.call_event(event_type), payload)
            PUBLIC_EVENTS.labels(event_type).inc()
        # on the server before the batch is acked
        await self._nc.flush(timeout=5)

    async def close(self) -> None:
        return None

    def is_transient(self, exc: BaseException) -> bool:
        # NATS errors are link errors; anything else (a bug building the payload) is parked
        return isinstance(exc, nats.errors.Error | OSError | TimeoutError)
