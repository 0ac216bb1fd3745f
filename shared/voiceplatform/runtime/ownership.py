"""Per-call ownership for streaming stages (VAD, streaming ASR).

Queue groups balance per message, which would shred a call's streaming state across instances. So
a gateway *requests* ``vp.svc.<role>.assign`` (queue group = role); exactly one instance answers,
accepting when under ``max_calls`` or rejecting so the gateway asks again. The owner then
subscribes to that call alone. Owners heartbeat the calls they hold every ``HEARTBEAT_INTERVAL_S``;
a gateway that hears nothing of a call's owner for ``OWNER_TIMEOUT_S`` re-assigns it (and replays
the caller audio since the last confirmed turn end to the new owner). On drain, an owner stops
answering and gives its calls back (``assign.released``) once their in-flight work is done.

Fencing: each assignment carries an ``epoch`` (the call's count of assignments of the role); the
owner stamps it on what it publishes, and an owner that hears ``assign.changed`` with a newer epoch
(it was frozen, or slow, and the call moved) stops the call without publishing more (``moved``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from voiceplatform import load, subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.wire import (
    AssignReply,
    AssignRequest,
    Message,
    OwnerChanged,
    OwnerReleased,
    WorkerHeartbeat,
)

log = structlog.get_logger("voiceplatform.ownership")

# Sized for a failover within 1 s: an owner is lost after ~4.5 missed beats. Measured with
# bench/bench_failover_stream.py on a shared 2-core machine with two more CPU burners, and with a
# whisper ASR decoding turn after turn next to a Silero VAD: beats arrived at p99 160-230 ms and at
# most 356 ms apart, so a busy owner keeps its calls; the kill -9 gap was p50 ~0.68 s, p95
# 0.72-0.92 s. A false failover costs a replay, never a turn (see fencing above).
HEARTBEAT_INTERVAL_S = 0.15
# a gateway re-assigns a call when its owner has not mentioned it for this long
OWNER_TIMEOUT_S = 0.7

AcceptCall = Callable[[AssignRequest], Awaitable[None]]
DropCall = Callable[[str], Awaitable[None]]


class CallOwnership:
    def __init__(
        self,
        bus: Bus,
        role: str,
        instance_id: str,
        max_calls: int,
        accept: AcceptCall,
        drop: DropCall | None = None,
    ) -> None:
        self.bus = bus
        self.role = role
        self.instance_id = instance_id
        self.max_calls = max_calls
        self._accept = accept
        # closes a held call's session without publishing (re-assigned here under a newer epoch)
        self._drop = drop
        self.calls: set[str] = set()
        self.epochs: dict[str, int] = {}
        self._beat_at = time.monotonic()  # when the heartbeat loop last ran
        self._assign_subs: list[Subscription] = []
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.accepting = False

    async def start(self) -> None:
        self._assign_subs = [
            await self.bus.subscribe(
                subjects.assign(self.role), self._on_assign, queue=subjects.queue_group(self.role)
            ),
            await self.bus.subscribe(subjects.assign_to(self.role, self.instance_id), self._on_assign),
        ]
        self.accepting = True
        load.track_calls(self.role, lambda: len(self.calls), self.max_calls)
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"{self.role}-heartbeat")

    async def _on_assign(self, env: Envelope) -> Message | None:
        req = env.message
        if not isinstance(req, AssignRequest):
            return None
        if req.epoch and time.monotonic() - self._beat_at > OWNER_TIMEOUT_S:
            # this loop did not run for longer than a gateway waits: the request probably sat in the
            # socket while the instance was frozen, and its gateway gave up on it (no clocks compared)
            return AssignReply(
                call_id=req.call_id,
                role=self.role,
                accepted=False,
                instance_id=self.instance_id,
                reason="stalled",
            )
        if not self.accepting:
            return AssignReply(
                call_id=req.call_id,
                role=self.role,
                accepted=False,
                instance_id=self.instance_id,
                reason="draining",
            )
        if req.call_id in self.calls:
            if req.epoch <= self.epochs.get(req.call_id, 0) or self._drop is None:
                return AssignReply(
                    call_id=req.call_id, role=self.role, accepted=True, instance_id=self.instance_id
                )
            # this instance held the call under an older epoch (it was slow and the call moved, now
            # it comes back): its session is stale, a new one takes the replay
            await self._drop(req.call_id)
            self.forget(req.call_id)
        if len(self.calls) >= self.max_calls:
            return AssignReply(
                call_id=req.call_id,
                role=self.role,
                accepted=False,
                instance_id=self.instance_id,
                reason="at_capacity",
            )
        self.calls.add(req.call_id)
        self.epochs[req.call_id] = req.epoch
        try:
            await self._accept(req)
        except Exception as exc:
            self.forget(req.call_id)
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
        self.epochs.pop(call_id, None)

    def epoch(self, call_id: str) -> int:
        return self.epochs.get(call_id, 0)

    def moved(self, msg: OwnerChanged) -> bool:
        """Whether ``assign.changed`` says a call held here now belongs to a newer assignment."""
        return msg.role == self.role and msg.call_id in self.calls and msg.epoch > self.epoch(msg.call_id)

    async def release(self, call_id: str, reason: str = "draining") -> None:
        self.forget(call_id)
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
            self._beat_at = time.monotonic()
            try:
                await self.heartbeat_now()
            except Exception:
                log.warning("ownership.heartbeat_failed", role=self.role)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def stop_accepting(self) -> None:
        self.accepting = False
        subs, self._assign_subs = self._assign_subs, []
        for sub in subs:
            await sub.unsubscribe()

    async def stop(self) -> None:
        await self.stop_accepting()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
