"""LLM service: llm.request → llm.sentence … → llm.done, cancellable by barge-in.

``llm.request`` is work from the ``VP_WORK`` stream (``bus/work.py``): a turn taken by an instance
that dies or hangs is run again by another; the sentences and ``llm.done`` carry ids by turn
(``Nats-Msg-Id``), so the stream keeps one copy of each whichever attempt published it first.
Every instance listens to the control subject (no queue group), so whichever instance runs a turn
sees its interrupt. Interrupted turn ids are remembered for a while: a request that arrives after
its interrupt (possible across instances, and for a redelivered one) is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from prometheus_client import Counter

from voiceplatform import metrics, subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.bus.streams import WORK
from voiceplatform.bus.work import WorkGivenAway, WorkSource, WorkSpec, check_still_ours, take_work
from voiceplatform.config import RobotConfig, RobotConfigError, RobotRegistry
from voiceplatform.config.tracks import TracksError
from voiceplatform.logging import bind_call
from voiceplatform.providers import LlmProvider, catalog
from voiceplatform.providers.base import ProviderContext
from voiceplatform.providers.chain import Failure, Lazy, ProviderChain
from voiceplatform.providers.keypool import BusKeyHealthStore, KeyHealthStore
from voiceplatform.providers.registry import RobotProviders
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.recent import RecentTurns
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import ControlInterrupt, LlmRequest, Message
from vp_llm.providers.script import ScriptDialog
from vp_llm.settings import LlmSettings
from vp_llm.track_turn import TrackTurns
from vp_llm.turn import SERVICE, TurnOutput, build_messages, llm_options

log = structlog.get_logger("vp_llm")

PROVIDERS = catalog.registry("llm")
REQUESTS_IGNORED = Counter(
    "vp_llm_requests_ignored_total", "llm.request messages not turned into a turn", ["reason"]
)
TURN_LATENCY = metrics.STAGE_LATENCY.labels(SERVICE, "llm_turn")

ProviderFactory = Callable[[str, RobotConfig], LlmProvider]


def registry_factory(name: str, robot: RobotConfig, key_health: KeyHealthStore | None = None) -> LlmProvider:
    return cast(LlmProvider, PROVIDERS.build(name, ProviderContext(robot=robot, key_health=key_health)))


class LlmService:
    name = SERVICE

    def __init__(
        self,
        settings: LlmSettings,
        robots: RobotRegistry | None = None,
        provider_factory: ProviderFactory = registry_factory,
    ) -> None:
        self.settings = settings
        self.robots = robots or RobotRegistry(settings.robots_dir)
        self._factory = provider_factory
        self._bus: Bus | None = None
        self._turns = TaskRegistry()
        self._interrupted = RecentTurns(settings.interrupt_memory_s)
        self._providers: RobotProviders[LlmProvider] = RobotProviders()
        self.tracks = TrackTurns()
        self._requests: WorkSource | None = None
        self._control_sub: Subscription | None = None
        self._draining = False

    # ---- Service ------------------------------------------------------------------------------
    async def start(self, bus: Bus) -> None:
        self._bus = bus
        if self._factory is registry_factory:
            # key cooldowns (429, invalid keys) are shared by every call and every LLM worker
            self._factory = functools.partial(registry_factory, key_health=BusKeyHealthStore(bus))
            self._prepare_scripts()
        self._prepare_tracks()
        self._control_sub = await bus.subscribe(subjects.ANY_CONTROL, self._on_control)
        spec = WorkSpec.of(WORK, subjects.queue_group("llm"), subjects.ANY_LLM_REQUEST, self.settings)
        self._requests = await take_work(bus, spec, self._on_request, self._exhausted)

    async def drain(self, timeout: float) -> None:
        self._draining = True
        if self._requests is not None:
            # turns still running when the time is up are handed back: another instance runs them
            await self._requests.stop(timeout)
            self._requests = None
        if not await self._turns.wait_all(timeout):
            log.warning("llm.drain_cancelling", turns=len(self._turns))
            await self._turns.cancel_all(self.settings.cancel_timeout_s)
        if self._control_sub is not None:
            await self._control_sub.unsubscribe()
            self._control_sub = None
        await self.close_providers()

    def ready(self) -> bool:
        return self._bus is not None and not self._draining

    def health(self) -> dict[str, Any]:
        return {"turns_in_flight": len(self._turns), "providers": self._providers.names()}

    def asgi_app(self) -> None:
        return None

    def _prepare_scripts(self) -> None:
        """Load every script robot's dialog.json now: problems show at start, examples get embedded."""
        for name in self.robots.names():
            try:
                robot = self.robots.get(name)
                cfg = robot.settings.llm
                if robot.settings.mode == "pipeline" and "script" in (cfg.provider, *cfg.fallback):
                    self._provider(robot, "script")

            except Exception as exc:  # the same problem fails that robot's turns later, loudly
                metrics.PROVIDER_ERRORS.labels(SERVICE, "script", "setup").inc()
                log.error("llm.script_unusable", robot=name, error=f"{type(exc).__name__}: {exc}"[:300])

    def _prepare_tracks(self) -> None:
        """Check every llm_script robot's manifest now and start embedding its phrases."""
        for name in self.robots.names():
            try:
                robot = self.robots.get(name)
                if robot.settings.mode == "llm_script":
                    self.tracks.chooser(robot)
            except Exception as exc:  # the same problem fails that robot's turns later, loudly
                log.error("llm.tracks_unusable", robot=name, error=f"{type(exc).__name__}: {exc}"[:300])

    async def examples_embedded(self, timeout_s: float) -> None:
        """Wait until every script robot's examples are embedded (a turn before that goes by keywords)."""
        for provider in self._providers.live():
            if isinstance(provider, ScriptDialog) and provider.script.use_meaning:
                await provider.script.index.ready(timeout_s)

    async def close_providers(self) -> None:
        await self._providers.aclose()

    # ---- handlers -----------------------------------------------------------------------------
    def was_interrupted(self, turn_id: str) -> bool:
        return turn_id in self._interrupted

    def _remember_interrupt(self, turn_id: str) -> None:
        self._interrupted.add(turn_id)

    async def _on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlInterrupt) and msg.turn_id:
            self._remember_interrupt(msg.turn_id)
            cancelled = await self._turns.cancel(msg.turn_id, self.settings.cancel_timeout_s)
            if cancelled:
                log.info("llm.turn_cancelled", call_id=msg.call_id, turn_id=msg.turn_id)
        return None

    async def _on_request(self, env: Envelope, attempt: int = 1) -> None:
        """One turn, start to end (the work is acknowledged when this returns)."""
        req = env.message
        if not isinstance(req, LlmRequest):
            return
        if self._draining:
            REQUESTS_IGNORED.labels("draining").inc()
            return
        if self.was_interrupted(req.turn_id):
            REQUESTS_IGNORED.labels("interrupted").inc()
            log.info("llm.request_ignored", call_id=req.call_id, turn_id=req.turn_id, reason="interrupted")
            return
        if self._turns.tasks_for(req.turn_id):
            if attempt == 1:
                REQUESTS_IGNORED.labels("duplicate").inc()
                return
            # our own stalled run of this turn was redelivered to us: it gives the turn away at
            # its next word, so it stops now and the turn starts over here
            await self._turns.cancel(req.turn_id, self.settings.cancel_timeout_s)
        turn = self._turns.spawn(
            self._run_turn(req, time.monotonic()), key=req.turn_id, name=f"llm-{req.turn_id}"
        )
        try:
            await asyncio.wait({turn})
        except asyncio.CancelledError:
            turn.cancel()  # handed back (drain): the turn stops here and runs elsewhere
            raise

    async def _exhausted(self, env: Envelope) -> None:
        req = env.message
        if isinstance(req, LlmRequest):
            await self._stage_error(req, "worker_lost", "no llm instance finished the turn", retryable=False)

    # ---- one turn -----------------------------------------------------------------------------
    def _provider(self, robot: RobotConfig, name: str) -> LlmProvider:
        return self._providers.get(robot, name, lambda: self._factory(name, robot))

    async def _stage_error(self, req: LlmRequest, kind: str, detail: str, retryable: bool) -> None:
        assert self._bus is not None
        check_still_ours()  # a stalled original's failure is not the turn's: the retry answers it
        await publish_stage_error(
            self._bus,
            call_id=req.call_id,
            stage="llm",
            kind=kind,
            detail=detail,
            turn_id=req.turn_id,
            retryable=retryable,
        )

    async def _run_turn(self, req: LlmRequest, started: float) -> None:
        assert self._bus is not None
        with bind_call(call_id=req.call_id, turn_id=req.turn_id):
            out = TurnOutput(self._bus, req, self.settings.clause_chars, started)
            try:
                outcome = await self._generate(req, out)
            except WorkGivenAway:
                # this process stalled past the ack wait: another instance answers the turn
                metrics.TURNS.labels(SERVICE, "given_away").inc()
                log.warning("llm.turn_given_away", sentences=out.published)
                raise
            except asyncio.CancelledError:
                # barge-in: tell the router what had been generated, then stop (a turn handed back
                # on drain, or started over, is finished by another run, which says llm.done)
                if self.was_interrupted(req.turn_id):
                    await out.publish_done(interrupted=True)
                metrics.TURNS.labels(SERVICE, "interrupted").inc()
                log.info("llm.turn_interrupted", sentences=out.published, chars=len(out.text))
                raise
            await out.publish_done()
            metrics.TURNS.labels(SERVICE, outcome).inc()
            TURN_LATENCY.observe((time.monotonic() - started) * 1000)
            log.info(
                "llm.turn_done",
                outcome=outcome,
                provider=out.provider,
                sentences=out.published,
                hangup=out.end_call,
                transfer_to=out.transfer_to,
                ms=round((time.monotonic() - started) * 1000, 1),
                pii_text=out.text,
            )

    async def _generate(self, req: LlmRequest, out: TurnOutput) -> str:
        """Run the provider chain; returns the outcome label."""
        try:
            robot = self.robots.get(req.robot)
        except RobotConfigError as exc:
            log.error("llm.robot_unavailable", robot=req.robot, problems=exc.problems)
            await self._stage_error(req, "robot_config", str(exc), retryable=False)
            return "failed"
        cfg = robot.settings.llm

        async def failed(failure: Failure) -> None:
            await self._stage_error(req, failure.kind, failure.detail, failure.retryable)

        if robot.settings.mode == "llm_script":
            try:
                return await self.tracks.run(
                    req, robot, out, functools.partial(self._chain, robot, req), failed
                )
            except TracksError as exc:
                log.error("llm.tracks_unavailable", robot=req.robot, problems=exc.problems)
                await self._stage_error(req, "robot_config", str(exc), retryable=False)
                return "failed"
        options = llm_options(robot, req)
        messages = build_messages(req)
        log.info("llm.turn_started", provider=cfg.provider, turn_event=req.event, pii_user_text=req.user_text)
        chain = self._chain(robot, req, [cfg.provider, *cfg.fallback])
        outcome = await out.run(chain, messages, options, on_failure=failed)
        if outcome.finished:
            return "ok"
        return "failed"

    def _chain(self, robot: RobotConfig, req: LlmRequest, names: list[str]) -> ProviderChain[LlmProvider]:
        return ProviderChain(
            "llm",
            [Lazy(name, functools.partial(self._provider, robot, name)) for name in names],
            bus=self._bus,
            call_id=req.call_id,
            turn_id=req.turn_id,
            first_chunk_timeout_s=robot.settings.llm.first_token_timeout_s,
            output_word="text",
        )


def build() -> tuple[LlmService, LlmSettings]:
    settings = LlmSettings()
    return LlmService(settings), settings
