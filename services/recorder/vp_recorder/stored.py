"""Call events as the recorder's JetStream stream holds them.

The stream sequence is the event's identity: a redelivered message keeps it, so every store writes
idempotently by it (``event_id``), and a public event carries it as ``id`` for its subscribers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from voiceplatform.wire import Message


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int  # stream sequence
    subject: str
    message: Message

    @property
    def call_id(self) -> str:
        return self.message.call_id

    @property
    def event_id(self) -> str:
        # the call id keeps ids unique even if an operator recreates the stream (sequences restart)
        return f"{self.message.call_id}:{self.seq}"


class CallEventReader(Protocol):
    """Reads back every stored event of one call, in stream order (malformed ones left out)."""

    async def read_call(self, call_id: str) -> list[StoredEvent]: ...


class Store(Protocol):
    """One destination of the recorder, fed by its own durable consumer.

    ``write`` gets a batch of the events ``accepts`` let through, in stream order, and must be
    idempotent (the same event may come again after a crash): it succeeds as a whole or raises.
    ``is_transient`` tells a store that is down (retry after reconnect) from an event it rejects.
    ``stream_subjects``: the stream subjects its events come on (None: all), so that its consumer is not
    handed, pulled and acked what ``accepts`` would drop (tests/recorder/test_store_subjects.py
    checks the two agree). ``live``: it passes events on to other systems as they happen (public
    events), so its consumer gathers a batch for ``VP_BATCH_LINGER_S``, not the archives' longer
    ``VP_ARCHIVE_LINGER_S``.
    """

    name: str
    live: bool

    @property
    def stream_subjects(self) -> tuple[str, ...] | None: ...

    def accepts(self, message: Message) -> bool: ...
    async def connect(self) -> None: ...
    async def write(self, events: Sequence[StoredEvent]) -> None: ...
    async def close(self) -> None: ...
    def is_transient(self, exc: BaseException) -> bool: ...
