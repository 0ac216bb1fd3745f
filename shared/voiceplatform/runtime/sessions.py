"""The calls a stateful worker owns: one session object each, closed once, reaped when idle.

VAD and realtime workers (any role that takes calls by assignment) keep their per-call sessions
here: the active-calls gauge, forgetting the call in ``CallOwnership`` and closing the session
happen together, and a call whose gateway vanished without ``call.ended`` is closed after
``idle_timeout_s`` without audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Generic, Protocol, TypeVar

import structlog

from voiceplatform import metrics
from voiceplatform.logging import bind_call
from voiceplatform.runtime.ownership import CallOwnership

log = structlog.get_logger("voiceplatform.sessions")

IDLE_CHECK_INTERVAL_S = 5.0


class CallSessionLike(Protocol):
    last_activity: float  # time.monotonic() of the last audio or provider event

    async def close(self, reason: str) -> None: ...


S = TypeVar("S", bound=CallSessionLike)


class OwnedSessions(Generic[S]):
    def __init__(self, service: str, idle_timeout_s: float) -> None:
        self.service = service
        self.idle_timeout_s = idle_timeout_s
        self.by_call: dict[str, S] = {}
        self.ownership: CallOwnership | None = None
        self._reaper: asyncio.Task[None] | None = None
        metrics.ACTIVE_CALLS.labels(service)  # the series exists at 0 from the start

    def __len__(self) -> int:
        return len(self.by_call)

    def start_reaper(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name=f"{self.service}-idle-reaper")

    async def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    def add(self, call_id: str, session: S) -> None:
        self.by_call[call_id] = session
        metrics.ACTIVE_CALLS.labels(self.service).inc()

    async def hand_back_all(self) -> None:
        """Drain: close every session, then give its call back so the gateway re-assigns it at once
        (closing first means this instance and the next owner never both emit for the same audio)."""
        for call_id in list(self.by_call):
            await self.close(call_id, "draining")
            if self.ownership is not None:
                await self.ownership.release(call_id)

    def health(self, instance_id: str, max_calls: int) -> dict[str, object]:
        accepting = self.ownership is not None and self.ownership.accepting
        return {
            "instance_id": instance_id,
            "calls": len(self),
            "max_calls": max_calls,
            "accepting": accepting,
        }

    async def close(self, call_id: str, reason: str) -> None:
        session = self.by_call.pop(call_id, None)
        if self.ownership is not None:
            self.ownership.forget(call_id)
        if session is None:
            return
        metrics.ACTIVE_CALLS.labels(self.service).dec()
        await session.close(reason)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_INTERVAL_S)
            now = time.monotonic()
            for call_id, session in list(self.by_call.items()):
                if now - session.last_activity > self.idle_timeout_s:
                    with bind_call(call_id=call_id):
                        log.warning(
                            "sessions.call_idle",
                            service=self.service,
                            idle_s=round(now - session.last_activity, 1),
                        )
                    await self.close(call_id, "idle")
