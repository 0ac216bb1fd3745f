"""What a gateway knows about the workers: who is alive (for /health) and who owns which call.

Streaming owners (vad, asr) heartbeat the calls they hold; a call whose owner goes silent for
``OWNER_TIMEOUT_S`` or releases it (drain) is re-assigned, so the caller hears at most a short gap.
The watchdog does not judge owners on a tick it woke up late for: the gateway's own loop was busy,
and the heartbeats it has not read yet would make an owner look silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import structlog

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.runtime.ownership import HEARTBEAT_INTERVAL_S, OWNER_TIMEOUT_S
from voiceplatform.wire import Message, OwnerReleased, WorkerHeartbeat

log = structlog.get_logger("voiceplatform.gateway")

STREAMING_ROLES = ("vad", "asr")
REALTIME_ROLES = ("realtime",)
OWNED_ROLES = STREAMING_ROLES + REALTIME_ROLES  # every role that owns calls and heartbeats them
PIPELINE_ROLES = ("vad", "asr", "prompt-router", "llm", "tts", "recorder")
PRESENCE_TIMEOUT_S = 3.5
WATCH_INTERVAL_S = 0.05
# an instance heard from this recently is asked first when a call must move
CANDIDATE_FRESH_S = 2.5 * HEARTBEAT_INTERVAL_S
# a watchdog tick this late means the gateway itself was busy: no verdict on that tick
WATCH_LATE_S = 0.2


def owned_roles_for(mode: str) -> tuple[str, ...]:
    """The stateful roles a call of this robot mode is assigned to."""
    return REALTIME_ROLES if mode == "realtime" else STREAMING_ROLES


class OwnedCall(Protocol):
    call_id: str
    owners: dict[str, str]
    owner_seen: dict[str, float]

    def request_reassign(self, role: str, reason: str) -> None: ...
    def owner_stale(self, role: str, instance_id: str) -> None: ...


class GatewayDirectory:
    def __init__(self, bus: Bus, required: tuple[str, ...] = PIPELINE_ROLES) -> None:
        self.bus = bus
        self.required = required
        self._presence: dict[str, dict[str, float]] = {}
        # owners by role: instance -> (last heartbeat, calls held, capacity)
        self._workers: dict[str, dict[str, tuple[float, int, int]]] = {}
        self.calls: dict[str, OwnedCall] = {}
        self._subs: list[Subscription] = []
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subs.append(await self.bus.subscribe(subjects.ANY_PRESENCE, self._on_presence))
        for role in OWNED_ROLES:
            self._subs.append(await self.bus.subscribe(subjects.heartbeat(role), self._on_heartbeat))
            self._subs.append(await self.bus.subscribe(subjects.released(role), self._on_released))
        self._watchdog = asyncio.create_task(self._watch(), name="owner-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    def register(self, call: OwnedCall) -> None:
        self.calls[call.call_id] = call

    def unregister(self, call_id: str) -> None:
        self.calls.pop(call_id, None)

    # ---- presence (health) -------------------------------------------------------------------
    def _seen(self, role: str, instance_id: str) -> None:
        self._presence.setdefault(role, {})[instance_id] = time.monotonic()

    def live_instances(self, role: str) -> int:
        now = time.monotonic()
        return sum(1 for t in self._presence.get(role, {}).values() if now - t < PRESENCE_TIMEOUT_S)

    def missing_roles(self) -> list[str]:
        return [role for role in self.required if self.live_instances(role) == 0]

    async def _on_presence(self, env: Envelope) -> Message | None:
        beat = env.message
        if isinstance(beat, WorkerHeartbeat) and beat.ready:
            self._seen(beat.role, beat.instance_id)
        return None

    # ---- ownership ---------------------------------------------------------------------------
    async def _on_heartbeat(self, env: Envelope) -> Message | None:
        beat = env.message
        if not isinstance(beat, WorkerHeartbeat):
            return None
        now = time.monotonic()
        self._workers.setdefault(beat.role, {})[beat.instance_id] = (now, len(beat.calls), beat.capacity)
        for call_id in beat.calls:
            call = self.calls.get(call_id)
            if call is None:
                continue
            if call.owners.get(beat.role) == beat.instance_id:
                call.owner_seen[beat.role] = now
            else:
                call.owner_stale(beat.role, beat.instance_id)
        return None

    def candidates(self, role: str, exclude: str = "") -> list[str]:
        """Instances of ``role`` heard from within two heartbeats, with room, least loaded first."""
        now = time.monotonic()
        fresh = [
            (calls, instance)
            for instance, (seen, calls, capacity) in self._workers.get(role, {}).items()
            if instance != exclude and now - seen < CANDIDATE_FRESH_S and (capacity <= 0 or calls < capacity)
        ]
        return [instance for _, instance in sorted(fresh)]

    async def _on_released(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, OwnerReleased):
            call = self.calls.get(msg.call_id)
            if call is not None and call.owners.get(msg.role) == msg.instance_id:
                call.request_reassign(msg.role, f"released:{msg.reason}")
        return None

    async def _watch(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            if now - asked > WATCH_INTERVAL_S + WATCH_LATE_S:
                continue
            for call in list(self.calls.values()):
                for role, instance in list(call.owners.items()):
                    if instance and now - call.owner_seen.get(role, now) > OWNER_TIMEOUT_S:
                        log.warning("gateway.owner_lost", call_id=call.call_id, role=role, instance=instance)
                        call.request_reassign(role, "owner_silent")
