"""The VAD service: takes calls by assignment, runs one ``VadSession`` per owned call."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.applications import Starlette

from voiceplatform import metrics
from voiceplatform.bus import Bus
from voiceplatform.config import RobotRegistry
from voiceplatform.providers.interfaces import VadModel
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.ownership import CallOwnership
from voiceplatform.runtime.sessions import OwnedSessions
from voiceplatform.wire import AssignRequest
from voiceplatform.wire.messages import SUPPORTED_SAMPLE_RATES

from .eot import EotModel
from .metrics import SERVICE
from .providers import build_eot_model, build_model
from .session import VadSession
from .settings import VadSettings

log = structlog.get_logger("vp_vad.app")


class VadService:
    name = SERVICE

    def __init__(self, settings: VadSettings) -> None:
        self.settings = settings
        self.robots = RobotRegistry(settings.robots_dir)
        self.owned: OwnedSessions[VadSession] = OwnedSessions(SERVICE, settings.idle_timeout_s)
        self.tasks = TaskRegistry()
        self._bus: Bus | None = None
        self._ownership: CallOwnership | None = None
        self._drained = False

    @property
    def ownership(self) -> CallOwnership:
        if self._ownership is None:
            raise RuntimeError("service not started")
        return self._ownership

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        metrics.FRAMES_IN.labels(SERVICE)
        if self.settings.preload_silero:
            await self._preload_silero()
        if self.settings.preload_eot:
            await self._preload_eot()
        self._ownership = CallOwnership(
            bus, "vad", self.settings.instance_id, self.settings.max_calls, self._accept, self._drop
        )
        await self._ownership.start()
        self.owned.ownership = self._ownership
        self.owned.start_reaper()

    async def _preload_silero(self) -> None:
        from .providers.silero import SileroModelMissing, load_shared_session

        try:
            await load_shared_session(self.settings.silero_model_path)
        except (SileroModelMissing, OSError, RuntimeError) as exc:
            # energy robots still work; a silero robot's assignment will be rejected with the reason
            log.warning("vad.silero_unavailable", error=str(exc)[:200])

    async def _preload_eot(self) -> None:
        from .eot import EotModelMissing, load_shared_session

        try:
            await load_shared_session(self.settings.smart_turn_model)
        except (EotModelMissing, OSError, RuntimeError) as exc:
            # calls still work: their turns end on silence alone
            log.warning("vad.eot_model_unavailable", error=str(exc)[:200])

    async def _accept(self, req: AssignRequest) -> None:
        assert self._bus is not None
        if req.sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(f"unsupported sample rate {req.sample_rate}")
        cfg = self.robots.get(req.robot).settings.vad
        model: VadModel | None = None
        eot: EotModel | None = None
        if cfg.enabled:
            model = await build_model(cfg, self.settings.silero_model_path)
            eot = await build_eot_model(cfg, self.settings.smart_turn_model)
        session = VadSession(
            self._bus,
            req.call_id,
            req.sample_rate,
            cfg,
            model,
            self._call_ended,
            eot=eot,
            epoch=req.epoch,
            replay=req.replay,
            on_moved=self._call_moved,
        )
        await session.start()
        self.owned.add(req.call_id, session)

    async def _call_ended(self, call_id: str) -> None:
        self.tasks.spawn(self.close_call(call_id, "call_ended"), key=call_id, name=f"vad-close-{call_id}")

    async def _call_moved(self, session: VadSession) -> None:
        """A newer owner has the call (this instance was frozen or slow): close it, once."""
        self.tasks.spawn(self._close_moved(session), key=session.call_id, name=f"vad-moved-{session.call_id}")

    async def _close_moved(self, session: VadSession) -> None:
        if self.owned.by_call.get(session.call_id) is session:
            await self.close_call(session.call_id, "moved")

    async def _drop(self, call_id: str) -> None:
        await self.close_call(call_id, "moved")

    async def close_call(self, call_id: str, reason: str) -> None:
        await self.owned.close(call_id, reason)

    @property
    def sessions(self) -> dict[str, VadSession]:
        return self.owned.by_call

    async def drain(self, timeout: float) -> None:
        """Stop taking calls, hand every owned call back (the gateway re-assigns it at once)."""
        if self._ownership is None or self._drained:
            return
        self._drained = True
        await self._ownership.stop_accepting()
        await self.owned.hand_back_all()
        await self.tasks.wait_all(timeout)
        await self.tasks.cancel_all()
        await self.owned.stop_reaper()
        await self._ownership.stop()
        log.info("vad.drained")

    def ready(self) -> bool:
        return self._ownership is not None and self._ownership.accepting

    def health(self) -> dict[str, Any]:
        return self.owned.health(self.settings.instance_id, self.settings.max_calls)

    def asgi_app(self) -> Starlette | None:
        return None
