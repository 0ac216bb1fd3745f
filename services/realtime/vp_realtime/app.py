"""The realtime service: takes realtime-mode calls by assignment, one ``RealtimeCallSession`` each.

Stateful per call like VAD and ASR (one provider socket per call), so calls are owned, heartbeated
and handed back on drain. Draining waits for replies in progress to finish before handing calls
back, so nobody hears a sentence cut by a deploy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from voiceplatform.bus import Bus
from voiceplatform.config import RobotConfig, RobotRegistry
from voiceplatform.providers import ProviderError
from voiceplatform.providers.realtime import RealtimeConnection, RealtimeProvider, RealtimeSessionConfig
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.ownership import CallOwnership
from voiceplatform.runtime.sessions import OwnedSessions
from voiceplatform.wire import SUPPORTED_SAMPLE_RATES, AssignRequest

from .metrics import SERVICE
from .providers import build_endpoint
from .session import RealtimeCallSession
from .settings import RealtimeSettings

log = structlog.get_logger("vp_realtime.app")

ProviderFactory = Callable[[RobotConfig], RealtimeProvider]


class _Unavailable:
    def __init__(self, name: str, error: ProviderError) -> None:
        self.name = name
        self.error = error

    async def connect(self, config: RealtimeSessionConfig) -> RealtimeConnection:
        raise self.error


class RealtimeService:
    name = SERVICE

    def __init__(
        self, settings: RealtimeSettings, provider_factory: ProviderFactory = build_endpoint
    ) -> None:
        self.settings = settings
        self.robots = RobotRegistry(settings.robots_dir)
        self.provider_factory = provider_factory
        self.owned: OwnedSessions[RealtimeCallSession] = OwnedSessions(SERVICE, settings.idle_timeout_s)
        self.tasks = TaskRegistry()
        self._bus: Bus | None = None
        self._ownership: CallOwnership | None = None
        self._drained = False

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        self._ownership = CallOwnership(
            bus, SERVICE, self.settings.instance_id, self.settings.max_calls, self._accept
        )
        await self._ownership.start()
        self.owned.ownership = self._ownership
        self.owned.start_reaper()

    async def _accept(self, req: AssignRequest) -> None:
        assert self._bus is not None
        if req.sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(f"unsupported sample rate {req.sample_rate}")
        robot = self.robots.get(req.robot)
        if robot.settings.mode != "realtime":
            raise ValueError(f"robot {robot.name!r} is not in realtime mode")
        try:
            provider: RealtimeProvider = self.provider_factory(robot)
        except ProviderError as exc:
            # no key, no folder: take the call anyway so it ends at once with the reason on record,
            # instead of the gateway asking every instance again and again
            provider = _Unavailable(robot.settings.realtime.provider, exc)
        session = RealtimeCallSession(
            self._bus, req.call_id, req.sample_rate, robot, provider, self._call_ended, req.variables
        )
        await session.start()
        self.owned.add(req.call_id, session)

    async def _call_ended(self, call_id: str) -> None:
        self.tasks.spawn(
            self.close_call(call_id, "call_ended"), key=call_id, name=f"realtime-close-{call_id}"
        )

    async def close_call(self, call_id: str, reason: str) -> None:
        await self.owned.close(call_id, reason)

    @property
    def sessions(self) -> dict[str, RealtimeCallSession]:
        return self.owned.by_call

    async def drain(self, timeout: float) -> None:
        """Stop taking calls; let replies in progress finish, then hand every call back."""
        if self._ownership is None or self._drained:
            return
        self._drained = True
        await self._ownership.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(s.replying for s in self.sessions.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await self.owned.hand_back_all()
        await self.tasks.wait_all(max(0.0, deadline - loop.time()))
        await self.tasks.cancel_all()
        await self.owned.stop_reaper()
        await self._ownership.stop()
        log.info("realtime.drained")

    def ready(self) -> bool:
        return self._ownership is not None and self._ownership.accepting

    def health(self) -> dict[str, Any]:
        return self.owned.health(self.settings.instance_id, self.settings.max_calls)

    def asgi_app(self) -> None:
        return None
