"""Orphaned calls: a call whose gateway died (kill -9, host lost) is closed as ``gateway_lost``.

Every service announces its presence each second (``subjects.presence``, ``runtime.service``),
with the instance id and the wall clock at which the process started (``since_ms``). A call's
``call.started`` names the gateway instance that owns it (``gateway_id``). The sweeper looks at the
calls PostgreSQL holds as active, and a call is an orphan when its gateway

- has been silent for ``orphan_after_s`` of the recorder's own listening time (only time during
  which presence of *some* instance was heard counts, so a NATS outage or a recorder that has just
  started does not make every gateway look dead), or
- is present but started after the call did: restarted under the same instance id, so this call
  belongs to its previous life (its new calls started after ``since_ms`` and are left alone).

For an orphan the sweeper publishes ``call.ended{reason: gateway_lost}`` on the call's lifecycle
subject, through JetStream with a message id, so every store and consumer closes the call the usual
way and two recorders sweeping at once give one event (the stream drops the duplicate); a call the
stream already holds a ``call.ended`` for is left to the stores. It then deletes the call's dialogue
state (KV ``vp_dialog``, key = call id). Calls without a ``gateway_id`` (older gateways) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import nats.js.errors
import structlog
from nats.js import JetStreamContext

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.bus.jetstream import read_subject
from voiceplatform.clock import now_ms
from voiceplatform.wire import GATEWAY_LOST, CallEnded, Message, WireError, WorkerHeartbeat, decode, encode
from vp_recorder.metrics import ORPHANS_CLOSED

log = structlog.get_logger("vp_recorder.orphans")

# presence of anyone heard this recently: the recorder is listening (its own presence counts)
LISTENING_S = 3.5
# instances neither heard nor owning an active call for this long are forgotten
FORGET_S = 600.0
# a call closed here is not looked at again for this long (PostgreSQL may lag behind the stream)
CLOSED_MEMORY_S = 300.0
MAX_CALLS_PER_SWEEP = 1000
MAX_TICK_S = 2.0

_ACTIVE_CALLS = """
SELECT call_id, gateway_id, started_at FROM calls
WHERE status = 'active' AND gateway_id IS NOT NULL AND gateway_id <> ''
ORDER BY started_at LIMIT $1
"""

Clock = Callable[[], float]
Rows = list[asyncpg.Record]
# runs a query on a pooled PostgreSQL connection (``RecorderApi.run``)
Query = Callable[[Callable[[asyncpg.Connection], Awaitable[Rows]]], Awaitable[Rows]]


@dataclass
class _Instance:
    heard_at: float | None = None  # recorder's monotonic clock; None: known only from a call
    since_ms: int = 0
    silent_s: float = 0.0  # listening time without its presence
    touched_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ActiveCall:
    call_id: str
    gateway_id: str
    started_ms: int


class PresenceBook:
    """Who is alive, judged on the recorder's clock (pure logic: tests drive it with a fake clock)."""

    def __init__(self, lost_after_s: float, clock: Clock = time.monotonic) -> None:
        self.lost_after_s = lost_after_s
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._last_heard_any: float | None = None
        self._last_tick = clock()

    def heard(self, instance_id: str, since_ms: int) -> None:
        now = self._clock()
        entry = self._instances.setdefault(instance_id, _Instance())
        entry.heard_at = now
        entry.since_ms = max(entry.since_ms, since_ms)
        entry.silent_s = 0.0
        entry.touched_at = now
        self._last_heard_any = now

    def listening(self) -> bool:
        heard = self._last_heard_any
        return heard is not None and self._clock() - heard < LISTENING_S

    def tick(self) -> None:
        """Advance every instance's silence by the listening time since the last tick."""
        now = self._clock()
        # a stalled loop (busy machine, slow query) must not count time it did not listen through
        elapsed = min(max(0.0, now - self._last_tick), MAX_TICK_S)
        self._last_tick = now
        listening = self.listening()
        for instance_id, entry in list(self._instances.items()):
            recently = entry.heard_at is not None and now - entry.heard_at < 1.5
            if recently:
                entry.silent_s = 0.0
            elif listening:
                entry.silent_s += elapsed
            if now - entry.touched_at > FORGET_S:
                del self._instances[instance_id]

    def orphaned(self, call: ActiveCall) -> str | None:
        """Why ``call`` has lost its gateway (``"silent"``/``"restarted"``), or None while it has one."""
        now = self._clock()
        entry = self._instances.setdefault(call.gateway_id, _Instance())
        entry.touched_at = now
        if entry.heard_at is not None and entry.since_ms and call.started_ms < entry.since_ms:
            return "restarted"
        if entry.silent_s >= self.lost_after_s:
            return "silent"
        return None


class OrphanSweeper:
    def __init__(
        self,
        bus: Bus,
        js: JetStreamContext,
        stream: str,
        active_calls: Query,
        lost_after_s: float,
        every_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.bus = bus
        self.js = js
        self.stream = stream
        self._query = active_calls
        self.every_s = every_s
        self.book = PresenceBook(lost_after_s, clock)
        self.closed = 0
        self._recent: dict[str, float] = {}
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(subjects.ANY_PRESENCE, self._on_presence)
        self._task = asyncio.create_task(self._run(), name="orphan-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_presence(self, env: Envelope) -> Message | None:
        beat = env.message
        if isinstance(beat, WorkerHeartbeat):
            self.book.heard(beat.instance_id, beat.since_ms)
        return None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL or JetStream out of reach: next round
                if not self._failing:  # once per outage
                    log.warning("recorder.orphan_sweep_failed", error=type(exc).__name__)
                self._failing = True
            else:
                self._failing = False

    async def sweep(self) -> list[str]:
        """One round: close every orphan found; returns their call ids."""
        self.book.tick()
        now = self._clock()
        self._recent = {c: t for c, t in self._recent.items() if now - t < CLOSED_MEMORY_S}
        rows = await self._query(lambda conn: conn.fetch(_ACTIVE_CALLS, MAX_CALLS_PER_SWEEP))
        closed: list[str] = []
        for row in rows:
            call = ActiveCall(str(row["call_id"]), str(row["gateway_id"]), _ms(row["started_at"]))
            if call.call_id in self._recent:
                continue
            why = self.book.orphaned(call)
            if why is not None:
                await self.close(call, why)
                closed.append(call.call_id)
        return closed

    async def close(self, call: ActiveCall, why: str) -> None:
        if not await self._ended_in_stream(call.call_id):
            now = now_ms()
            ended = CallEnded(
                call_id=call.call_id,
                reason=GATEWAY_LOST,
                duration_ms=max(0, now - call.started_ms) if call.started_ms else 0,
                ts_ms=now,
            )
            # the message id makes a second recorder's close of the same call a duplicate
            ack = await self.js.publish(
                subjects.lifecycle(call.call_id),
                encode(ended),
                headers={"Nats-Msg-Id": f"{GATEWAY_LOST}:{call.call_id}"},
            )
            if not ack.duplicate:  # else another recorder closed it first
                self.closed += 1
                ORPHANS_CLOSED.inc()
                log.warning(
                    "recorder.call_orphaned", call_id=call.call_id, gateway_id=call.gateway_id, why=why
                )
        await self._delete_dialog(call.call_id)
        self._recent[call.call_id] = self._clock()  # done: PostgreSQL may show it active a while

    async def _ended_in_stream(self, call_id: str) -> bool:
        try:
            raws = await read_subject(self.js, self.stream, subjects.lifecycle(call_id))
        except nats.js.errors.NotFoundError:
            return False
        for raw in raws:
            with contextlib.suppress(WireError):
                if isinstance(decode(raw.data), CallEnded):
                    return True
        return False

    async def _delete_dialog(self, call_id: str) -> None:
        # only an existing bucket: creating it here would give it other settings than the router's
        try:
            kv = await self.js.key_value(subjects.DIALOG_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.delete(call_id)


def _ms(at: datetime | None) -> int:
    return int(at.timestamp() * 1000) if at is not None else 0
