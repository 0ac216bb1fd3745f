"""The owners of one call's stateful roles (vad, asr, realtime) as its gateway sees them.

Assignment (and re-assignment when the directory finds an owner lost or released), the epochs that
fence a replaced owner, the caller-audio log replayed to a new owner, and ``assign.changed``. This
is the ``OwnedCall`` the gateway's directory watches; ``CallSession`` feeds it caller frames and
asks it whether a vad/asr event comes from the current owner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from voiceplatform import subjects
from voiceplatform.bus import Bus
from voiceplatform.clock import now_ms
from voiceplatform.gateway.assign import assign_until_accepted
from voiceplatform.gateway.failover import CallerAudioLog, OwnerEpochs, send_replay
from voiceplatform.gateway.owners import GatewayDirectory
from voiceplatform.logging import bind_call
from voiceplatform.wire import AssignRequest, OwnerChanged

log = structlog.get_logger("voiceplatform.gateway")

# a replaced owner that still heartbeats the call is told again at most this often
RETELL_S = 1.0

Spawn = Callable[[Coroutine[Any, Any, Any], str], None]
OnRefused = Callable[[str, str], Awaitable[None]]  # (role, why)


class CallOwners:
    def __init__(
        self,
        bus: Bus,
        template: AssignRequest,
        *,
        directory: GatewayDirectory | None,
        spawn: Spawn,
        ended: Callable[[], bool],
        next_seq: Callable[[], int],
        on_refused: OnRefused,
    ) -> None:
        self.bus = bus
        self.call_id = template.call_id
        self._template = template
        self.directory = directory
        self._spawn = spawn
        self._ended = ended
        self._next_seq = next_seq
        self._on_refused = on_refused
        self.owners: dict[str, str] = {}
        self.owner_seen: dict[str, float] = {}
        self.epochs = OwnerEpochs()  # fencing of replaced owners
        self.audio_log = CallerAudioLog()  # caller audio a new owner gets replayed
        self._assigning: set[str] = set()
        self._told: dict[str, float] = {}

    def request_reassign(self, role: str, reason: str) -> None:
        if self._ended() or role in self._assigning:
            return
        self._assigning.add(role)
        lost = self.owners.pop(role, "")
        self.epochs.next(role)  # from now on the replaced owner's events are dropped
        self._spawn(self._assign(role, reason, lost), f"assign-{role}")

    async def _assign(self, role: str, reason: str, lost: str) -> None:
        # a new owner after caller audio went out gets that audio replayed
        replay = reason != "call_start" or self._next_seq() > 0
        request = AssignRequest(
            call_id=self.call_id,
            role=role,
            robot=self._template.robot,
            sample_rate=self._template.sample_rate,
            channel=self._template.channel,
            replay=replay,
            variables=self._template.variables,
        )

        def stamp(req: AssignRequest) -> None:  # every attempt its own epoch (see assign.py)
            req.epoch = self.epochs.next(role)
            req.fence = dict(self.epochs.current)
            req.ts_ms = now_ms()

        def candidates() -> list[str]:
            directory = self.directory
            return directory.candidates(role, exclude=lost) if directory is not None and lost else []

        async def refused(why: str) -> None:
            log.warning("call.assign_retry", role=role, why=why)
            await self._on_refused(role, why)

        try:
            with bind_call(call_id=self.call_id):
                reply = await assign_until_accepted(
                    self.bus,
                    request,
                    lambda: not self._ended(),
                    refused,
                    stamp=stamp,
                    candidates=candidates,
                )
                if reply is None:
                    return
                next_seq = self._next_seq()  # every later frame reaches the new owner live
                self.owners[role] = reply.instance_id
                self.owner_seen[role] = time.monotonic()
                await self._tell(role)
                replayed = 0
                if replay:
                    replayed = await send_replay(
                        self.bus,
                        self.audio_log,
                        call_id=self.call_id,
                        role=role,
                        epoch=request.epoch,
                        sample_rate=request.sample_rate,
                        next_seq=next_seq,
                    )
                log.info(
                    "call.assigned",
                    role=role,
                    instance=reply.instance_id,
                    reason=reason,
                    epoch=request.epoch,
                    replayed_frames=replayed,
                )
        finally:
            self._assigning.discard(role)

    async def _tell(self, role: str) -> None:
        """``assign.changed`` on lifecycle: a replaced owner that hears it stops the call."""
        self._told[role] = time.monotonic()
        await self.bus.publish(
            subjects.lifecycle(self.call_id),
            OwnerChanged(
                call_id=self.call_id,
                role=role,
                instance_id=self.owners.get(role, ""),
                epoch=self.epochs.current.get(role, 0),
            ),
        )

    def owner_stale(self, role: str, instance_id: str) -> None:
        """A replaced owner still heartbeats this call (it missed ``assign.changed``): tell it again."""
        if (
            self._ended()
            or not self.owners.get(role)
            or time.monotonic() - self._told.get(role, 0.0) < RETELL_S
        ):
            return
        log.info("call.stale_owner", call_id=self.call_id, role=role, instance=instance_id)
        self._spawn(self._tell(role), f"tell-{role}")

    def from_owner(self, role: str, epoch: int) -> bool:
        """Whether an event comes from the role's current owner; it also proves that owner alive."""
        if not self.epochs.accepts(role, epoch):
            return False
        if epoch and self.owners.get(role):
            self.owner_seen[role] = time.monotonic()
        return True
