"""Per-call ownership for streaming stages (VAD, streaming ASR).

Queue groups balance per message, which would shred a call's streaming state across instances. So
a gateway *requests* ``vp.svc.<role>.assign`` (queue group = role); exactly one instance answers,
accepting when under ``max_calls`` or rejecting so the gateway asks again. The owner then
subscribes to that call alone. Owners heartbeat the calls they hold every second; a gateway that
misses heartbeats for a call re-assigns it. On drain, an owner stops answering and gives its calls
back (``assign.released``) once their in-flight work is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.wire import AssignReply, AssignRequest, Message, OwnerReleased, WorkerHeartbeat

log = structlog.get_logger("voiceplatform.ownership")

HEARTBEAT_INTERVAL_S = 1.0
# a gateway re-assigns a call when its owner has not mentioned it for this long
OWNER_TIMEOUT_S = 3.5

AcceptCall = Callable[[AssignRequest], Awaitable[None]]


class CallOwnership:
    def __init__(self, bus: Bus, role: str, instance_id: str, max_calls: int, accept: AcceptCall) -> None:
        self.bus = bus
        self.role = role
        self.instance_id = instance_id
        self.max_calls = max_calls
        self._accept = accept
        self.calls: set[str] = set()
        self._assign_sub: Subscription | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.accepting = False

    async def start(self) -> None:
        self._assign_sub = await self.bus.subscribe(
            subjects.assign(self.role), self._on_assign, queue=subjects.queue_group(self.role)
        )
        self.accepting = True
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"{self.role}-heartbeat")

    async def _on_assign(self, env: Envelope) -> Message | None:
        req = env.message
        if not isinstance(req, AssignRequest):
            return None
        if not self.accepting:
            return AssignReply(
                call_id=req.call_id,
                role=self.role,
                accepted=False,
                instance_id=self.instance_id,
                reason="draining",
            )
        if req.call_id in self.calls:
            return AssignReply(
                call_id=req.call_id, role=self.role, accepted=True, instance_id=self.instance_id
            )
        if len(self.calls) >= self.max_calls:
            return AssignReply(
                call_id=req.call_id,
                role=self.role,
                accepted=False,
                instance_id=self.instance_id,
                reason="at_capacity",
            )
        self.calls.add(req.call_id)
        try:
            await self._accept(req)
        except Exception as exc:
            self.calls.discard(req.call_id)
            log.exception("ownership.accept_failed", call_id=req.call_id)
            return AssignReply(
                call_id=req.call_id,
                role=self.role,
                accepted=False,
                instance_id=self.instance_id,
                reason=f"error:{type(exc).__name__}",
            )
        log.info("ownership.accepted", call_id=req.call_id, robot=req.robot, calls=len(self.calls))
        return AssignReply(call_id=req.call_id, role=self.role, accepted=True, instance_id=self.instance_id)

    def forget(self, call_id: str) -> None:
        """The call ended (or moved away): stop heartbeating it."""
        self.calls.discard(call_id)

    async def release(self, call_id: str, reason: str = "draining") -> None:
        self.calls.discard(call_id)
        await self.bus.publish(
            subjects.released(self.role),
            OwnerReleased(call_id=call_id, role=self.role, instance_id=self.instance_id, reason=reason),
        )

    async def heartbeat_now(self) -> None:
        await self.bus.publish(
            subjects.heartbeat(self.role),
            WorkerHeartbeat(
                call_id="",
                role=self.role,
                instance_id=self.instance_id,
                calls=sorted(self.calls),
                capacity=self.max_calls,
            ),
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat_now()
            except Exception:
                log.warning("ownership.heartbeat_failed", role=self.role)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def stop_accepting(self) -> None:
        self.accepting = False
        if self._assign_sub is not None:
            await self._assign_sub.unsubscribe()
            self._assign_sub = None

    async def stop(self) -> None:
        await self.stop_accepting()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
