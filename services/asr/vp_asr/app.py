"""The ASR service: owns calls by assignment, one ``AsrSession`` per call.

Providers are chosen per robot through a lazy registry: ``asr.provider`` then ``asr.fallback``, the
chain a session walks when a provider fails on a segment. Every provider class is a ``ProviderBase``
built by ``from_context``: a local one (``scope = "call"``) per call from the robot's ``AsrConfig``;
its ``preload()`` runs in a thread at start so the model is loaded once per process, before the
instance takes calls, and ``is_loaded()`` feeds health. A cloud provider (``scope = "robot"``) is
built once per robot (its keys and options) and shared by its calls. A
provider that cannot be built (unknown name, missing key) is left out of the chain with a logged
problem; only a call left with no provider at all gets a ``provider_unavailable`` stage error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import structlog
from starlette.applications import Starlette

from voiceplatform import metrics
from voiceplatform.bus import Bus
from voiceplatform.config import AsrConfig, RobotConfig, RobotConfigError, RobotRegistry
from voiceplatform.logging import mask_secrets
from voiceplatform.providers import AsrProvider, ProviderError, ProviderRegistry, catalog
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.providers.registry import RobotProviders, UnknownProvider
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.ownership import CallOwnership
from voiceplatform.wire import SUPPORTED_SAMPLE_RATES, AssignRequest
from vp_asr.metrics import MODEL_LOAD_SECONDS, SERVICE
from vp_asr.session import AsrSession, SessionOptions
from vp_asr.settings import AsrSettings
from vp_asr.vocabulary import VocabularyFiles

log = structlog.get_logger("vp_asr.app")

ROLE = "asr"
ASR_PROVIDERS = catalog.registry("asr")


class AsrService:
    name = SERVICE

    def __init__(self, settings: AsrSettings, providers: ProviderRegistry = ASR_PROVIDERS) -> None:
        self.settings = settings
        self.providers = providers
        self.robots = RobotRegistry(settings.robots_dir)
        self.sessions: dict[str, AsrSession] = {}
        self.tasks = TaskRegistry()
        self.ownership: CallOwnership | None = None
        self.bus: Bus | None = None
        self._preloaded: dict[str, type[ProviderBase]] = {}
        # cloud providers: one per (robot, provider), so the robot's calls share its connection
        self._robot_providers: RobotProviders[AsrProvider] = RobotProviders()
        self._draining = False
        self.vocabularies = VocabularyFiles()

    # ---- Service protocol -------------------------------------------------------------------
    async def start(self, bus: Bus) -> None:
        self.bus = bus
        for name in self.settings.preload_providers:
            await self._preload(name)
        self.ownership = CallOwnership(
            bus, ROLE, self.settings.instance_id, self.settings.max_calls, self._accept, self._close_call
        )
        await self.ownership.start()

    async def _preload(self, name: str) -> None:
        cls = self.providers.load(name)
        started = time.monotonic()
        await asyncio.to_thread(cls.preload)
        seconds = time.monotonic() - started
        MODEL_LOAD_SECONDS.labels(name).set(seconds)
        log.info("asr.provider_preloaded", provider=name, seconds=round(seconds, 2))
        self._preloaded[name] = cls

    def models_loaded(self) -> bool:
        return all(cls.is_loaded() for cls in self._preloaded.values()) and (
            set(self._preloaded) >= set(self.settings.preload_providers)
        )

    def ready(self) -> bool:
        return self.models_loaded() and self.ownership is not None and self.ownership.accepting

    def health(self) -> dict[str, Any]:
        return {
            "model_loaded": self.models_loaded(),
            "providers_loaded": sorted(self._preloaded),
            "calls": len(self.sessions),
            "recognitions_in_flight": len(self.tasks),
            "draining": self._draining,
        }

    def asgi_app(self) -> Starlette | None:
        return None

    async def drain(self, timeout: float) -> None:
        self._draining = True
        if self.ownership is not None:
            await self.ownership.stop_accepting()
        if not await self.tasks.wait_all(timeout):
            log.warning("asr.drain_timeout", still_running=len(self.tasks))
            await self.tasks.cancel_all()
        for call_id in list(self.sessions):
            if self.ownership is not None:
                await self.ownership.release(call_id)
            await self._close_call(call_id)
        if self.ownership is not None:
            await self.ownership.stop()
        await self._robot_providers.aclose()
        log.info("asr.drained")

    # ---- calls -------------------------------------------------------------------------------
    async def _accept(self, req: AssignRequest) -> None:
        assert self.bus is not None
        if req.sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(f"unsupported sample rate {req.sample_rate}")
        problems: list[tuple[str, str]] = []
        asr_config, pre_roll_ms = AsrConfig(), 200
        robot: RobotConfig | None = None
        try:
            robot = self.robots.get(req.robot)
            asr_config, pre_roll_ms = robot.settings.asr, robot.settings.vad.pre_roll_ms
            asr_config = self.vocabularies.with_vocabulary(asr_config, robot.path)
        except RobotConfigError as exc:
            problems.append(("robot_config", str(exc)))
        chain, skipped = self._make_chain(asr_config, robot)
        provider_problem = "; ".join(skipped)
        if not chain:
            problems.append(("provider_unavailable", provider_problem or "no asr provider configured"))
        options = SessionOptions(
            sample_rate=req.sample_rate,
            language=asr_config.language,
            pre_roll_ms=pre_roll_ms,
            post_roll_ms=self.settings.post_roll_ms,
            tail_wait_ms=self.settings.tail_wait_ms,
            buffer_ms=self.settings.buffer_ms,
            max_segment_ms=min(30_000, self.settings.buffer_ms - 2_000),
            min_speech_ms=self.settings.min_speech_ms,
            speculate=self.settings.speculate,
            speculate_min_eot=self.settings.speculate_min_eot,
        )
        session = AsrSession(
            self.bus,
            req.call_id,
            options,
            chain[0] if chain else None,
            self.tasks,
            self._call_ended,
            provider_problem,
            fallbacks=chain[1:],
            epoch=req.epoch,
            vad_epoch=req.fence.get("vad", 0),
            replay=req.replay,
            on_moved=self._call_moved,
        )
        await session.open()
        self.sessions[req.call_id] = session
        metrics.ACTIVE_CALLS.labels(SERVICE).inc()
        log.info(
            "asr.call_accepted",
            call_id=req.call_id,
            robot=req.robot,
            provider=session.provider_name,
            fallbacks=[p.name for p in chain[1:]],
            sample_rate=req.sample_rate,
        )
        if chain:
            for detail in skipped:  # the call goes on with the rest of the chain
                log.warning(
                    "asr.call_problem", call_id=req.call_id, kind="provider_skipped", detail=detail[:300]
                )
        for kind, detail in problems:
            log.warning("asr.call_problem", call_id=req.call_id, kind=kind, detail=detail[:300])
            await session.publish_problem(kind, detail)

    def _make_chain(
        self, config: AsrConfig, robot: RobotConfig | None
    ) -> tuple[list[AsrProvider], list[str]]:
        """The providers a call tries in order (``asr.provider``, then ``asr.fallback``), and why any
        of them was left out."""
        chain: list[AsrProvider] = []
        skipped: list[str] = []
        for name in dict.fromkeys([config.provider, *config.fallback]):
            provider, problem = self._make_provider(config, robot, name)
            if provider is not None:
                chain.append(provider)
            else:
                skipped.append(problem)
        return chain, skipped

    def _make_provider(
        self, config: AsrConfig, robot: RobotConfig | None, name: str | None = None
    ) -> tuple[AsrProvider | None, str]:
        name = name or config.provider
        try:
            cls = self._preloaded.get(name) or self.providers.load(name)
            if cls.scope != "call":
                if robot is None:
                    return None, f"{name}: needs the robot's configuration, which did not load"
                return self._robot_provider(cls, robot, config), ""
            provider = cast(AsrProvider, cls.from_context(ProviderContext(robot=robot, options=config)))
        except UnknownProvider as exc:
            return None, str(exc.args[0])
        except ProviderError as exc:
            # a configuration problem the provider explains itself (missing key, bad options);
            # its message is built to carry no secret
            metrics.PROVIDER_ERRORS.labels(SERVICE, name, "construct").inc()
            log.warning("asr.provider_construct_failed", provider=name, detail=mask_secrets(str(exc))[:300])
            return None, mask_secrets(str(exc))
        except Exception as exc:
            metrics.PROVIDER_ERRORS.labels(SERVICE, name, "construct").inc()
            log.exception("asr.provider_construct_failed", provider=name)
            return None, f"{name}: {type(exc).__name__}"
        return provider, ""

    def _robot_provider(self, cls: type[ProviderBase], robot: RobotConfig, config: AsrConfig) -> AsrProvider:
        ctx = ProviderContext(robot=robot, options=config)
        return self._robot_providers.get(robot, cls.name, lambda: cast(AsrProvider, cls.from_context(ctx)))

    def _call_moved(self, session: AsrSession) -> None:
        """A newer owner has the call (this instance was frozen or slow): close it, once."""

        async def close_if_current() -> None:
            if self.sessions.get(session.call_id) is session:
                await self._close_call(session.call_id)

        self.tasks.spawn(
            close_if_current(), key=f"close:{session.call_id}", name=f"asr-moved-{session.call_id}"
        )

    def _call_ended(self, call_id: str) -> None:
        # closing unsubscribes the handler that saw call.ended, so it must run in a task of its own
        self.tasks.spawn(self._close_call(call_id), key=f"close:{call_id}", name=f"asr-close-{call_id}")

    async def _close_call(self, call_id: str) -> None:
        session = self.sessions.pop(call_id, None)
        if self.ownership is not None:
            self.ownership.forget(call_id)
        if session is None:
            return
        await session.close()
        metrics.ACTIVE_CALLS.labels(SERVICE).dec()
        log.info("asr.call_closed", call_id=call_id)
