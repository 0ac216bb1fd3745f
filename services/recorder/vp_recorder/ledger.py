"""What this recorder has fetched of each call, so a view of a call (the public call.ended summary,
the call log, the Mongo transcript) is built without reading the call back from the stream.

Every message any store consumer fetches is noted here, once per stream sequence. The Postgres
store's consumer reads the whole stream, whose sequences have no gaps, so a call is complete in
memory when this process has noted its call.started and every stream message from there up to the
call's latest event it holds: the usual case with one recorder. The other stores' consumers read
only the subjects they use, so one of them may come to a call's end before the whole-stream
consumer has fetched what came before it: a view then waits for that consumer (at most
``GAP_WAIT_S``), unless the oldest sequence it lacks has been missing for ``GAP_STALL_S`` already:
that gap is not closing (Postgres is down, the recorder is stopping, another recorder has the
message), and waiting would only hold up every call's end in turn. Otherwise (the call began
before this process did, several recorders share the consumers, a message never came, the memory
bound was reached) the call is read back from the stream once, and that read serves the call's
later readers too.

Memory is bounded: the raw messages of at most ``max_events`` events (ended calls are forgotten
first, then the oldest calls; a forgotten call is read back when asked for), and at most
``max_ahead`` sequences noted beyond a gap (past that, the gap is given up: calls begun before it
are read back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from voiceplatform.wire import CallEnded, CallStarted, decode
from vp_recorder.stored import CallEventReader, StoredEvent

# how long a view waits for the whole-stream consumer to fetch up to its call's latest event, and
# how old the oldest missing sequence may be for that wait to be worth it
GAP_WAIT_S = 2.0
GAP_STALL_S = 0.5


@dataclass
class _Call:
    # seq -> (subject, wire bytes) as fetched (compact), or the event as read back
    raw: dict[int, tuple[str, bytes] | StoredEvent] = field(default_factory=dict)
    started_seq: int | None = None
    last_seq: int = 0
    read_through: int = 0  # the call was read back whole from the stream up to this sequence


class CallLedger:
    """A ``CallEventReader`` answering from memory when it can, else from ``fallback``."""

    def __init__(self, fallback: CallEventReader, max_events: int = 100_000, max_ahead: int = 50_000) -> None:
        self.fallback = fallback
        self.max_events = max_events
        self.max_ahead = max_ahead
        self.read_backs = 0  # calls read back from the stream (counted for /health and tests)
        self._floor: int | None = None  # calls that began at or before it are not known whole
        self._through = 0  # every sequence in (floor, through] is noted
        self._ahead: set[int] = set()
        self._active: dict[str, _Call] = {}  # in the order they were first noted
        self._ended: dict[str, _Call] = {}  # in the order they ended
        self._events = 0
        self._reading: dict[str, asyncio.Future[list[StoredEvent]]] = {}
        self._advanced: asyncio.Event | None = None  # set when ``_through`` moves, if awaited
        self._gap_since = 0.0  # monotonic time since which ``_through + 1`` has been missing
        self.waiting = True  # False once the recorder drains: views read back instead of waiting

    def note(self, seq: int, event: StoredEvent | None, data: bytes) -> None:
        """A fetched stream message: ``event`` is None when it did not decode."""
        self._see(seq)
        if event is None:
            return
        call_id = event.call_id
        call = self._active.get(call_id) or self._ended.get(call_id)
        if call is None:
            call = self._active[call_id] = _Call()
        if seq in call.raw:
            return
        call.raw[seq] = (event.subject, data)
        self._events += 1
        call.last_seq = max(call.last_seq, seq)
        if isinstance(event.message, CallStarted):
            call.started_seq = min(seq, call.started_seq or seq)
        elif isinstance(event.message, CallEnded) and call_id in self._active:
            self._ended[call_id] = self._active.pop(call_id)
        self._forget_beyond_bound()

    def complete(self, call_id: str) -> bool:
        call = self._active.get(call_id) or self._ended.get(call_id)
        return call is not None and self._is_whole(call)

    async def read_call(self, call_id: str) -> list[StoredEvent]:
        call = self._active.get(call_id) or self._ended.get(call_id)
        if call is not None and not self._is_whole(call) and self._began_after_floor(call):
            await self._wait_through(call.last_seq)
        if call is not None and self._is_whole(call):
            return _decoded(call)
        reading = self._reading.get(call_id)
        if reading is None:  # one read-back of a call at a time, shared by its readers
            reading = self._reading[call_id] = asyncio.ensure_future(self._read_back(call_id))
            reading.add_done_callback(lambda _: self._reading.pop(call_id, None))
        events = await asyncio.shield(reading)
        call = self._active.get(call_id) or self._ended.get(call_id)
        if call is None:
            return events
        for event in events:
            if event.seq not in call.raw:
                call.raw[event.seq] = event
                self._events += 1
        call.read_through = max([call.read_through, *(e.seq for e in events)])
        return _decoded(call)

    async def _read_back(self, call_id: str) -> list[StoredEvent]:
        self.read_backs += 1
        return await self.fallback.read_call(call_id)

    def _is_whole(self, call: _Call) -> bool:
        if call.last_seq <= call.read_through:
            return True
        return self._began_after_floor(call) and self._through >= call.last_seq

    def _began_after_floor(self, call: _Call) -> bool:
        floor = self._floor if self._floor is not None else 0
        return call.started_seq is not None and call.started_seq > floor

    async def _wait_through(self, seq: int) -> None:
        deadline = time.monotonic() + GAP_WAIT_S
        while self.waiting and self._through < seq:
            now = time.monotonic()
            wait = min(deadline, self._gap_since + GAP_STALL_S) - now
            if wait <= 0:
                return
            if self._advanced is None:
                self._advanced = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), wait)

    def _see(self, seq: int) -> None:
        if self._floor is None:
            self._floor = self._through = seq - 1
        if seq <= self._through:
            return
        if seq != self._through + 1:
            if not self._ahead:
                self._gap_since = time.monotonic()
            self._ahead.add(seq)
            if len(self._ahead) > self.max_ahead:
                # a gap that does not close (another recorder has those messages): give it up
                self._floor = self._through = max(self._ahead)
                self._ahead.clear()
            return
        self._through = seq
        while self._through + 1 in self._ahead:
            self._through += 1
            self._ahead.discard(self._through)
        if self._ahead:
            self._gap_since = time.monotonic()  # the oldest missing sequence is a newer one now
        if self._advanced is not None:
            self._advanced.set()
            self._advanced = None

    def _forget_beyond_bound(self) -> None:
        while self._events > self.max_events and (self._ended or self._active):
            calls = self._ended if self._ended else self._active
            forgotten = calls.pop(next(iter(calls)))
            self._events -= len(forgotten.raw)


def _decoded(call: _Call) -> list[StoredEvent]:
    """The call's events in stream order (each decoded before, so decoding cannot fail here)."""
    events = []
    for seq in sorted(call.raw):
        kept = call.raw[seq]
        events.append(kept if isinstance(kept, StoredEvent) else StoredEvent(seq, kept[0], decode(kept[1])))
    return events
