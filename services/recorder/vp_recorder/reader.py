"""Reads one call's events back from the JetStream stream (for views rebuilt from the log)."""

from __future__ import annotations

import structlog
from nats.js import JetStreamContext

from voiceplatform import subjects
from voiceplatform.bus.jetstream import read_subject, stream_sequence
from voiceplatform.wire import WireError, decode
from vp_recorder.stored import StoredEvent

log = structlog.get_logger("vp_recorder.reader")


class JetStreamCallReader:
    def __init__(self, js: JetStreamContext, stream: str) -> None:
        self._js = js
        self.stream = stream

    async def read_call(self, call_id: str) -> list[StoredEvent]:
        raws = await read_subject(self._js, self.stream, subjects.call_events_of(call_id))
        events: list[StoredEvent] = []
        for raw in raws:
            try:
                message = decode(raw.data)
            except WireError:
                continue  # parked (and counted) by the consumers; a view just leaves it out
            events.append(StoredEvent(stream_sequence(raw), raw.subject, message))
        return events
