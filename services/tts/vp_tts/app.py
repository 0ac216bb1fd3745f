"""TTS service: llm.sentence → tts.audio chunks, cancellable by barge-in.

Sentences are work taken from the ``VP_CALL_EVENTS`` stream (``bus/work.py``): one taken by an
instance that dies or hangs is synthesized again by another. The gateway keeps each chunk of a
sentence once (by ``seq``), so a slow original and its retry are not both heard.

Every instance also listens to the control subject without a queue group, so whichever instance
synthesizes a turn's sentence sees its interrupt. Interrupted turn ids are remembered for a while:
a sentence that arrives after its interrupt is dropped. Providers are tried in the robot's order
(``tts.provider`` then ``tts.fallback``) until one gives audio; once audio went out for a sentence
the voice never changes mid-sentence. Every attempt that reached a provider (failed, stalled and
cancelled ones too) is published as ``provider.usage`` with the characters it was sent, for cost.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import structlog

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.bus.streams import CALL_EVENTS
from voiceplatform.bus.work import WorkSource, WorkSpec, check_still_ours, take_work
from voiceplatform.config import RobotConfig, RobotConfigError, RobotRegistry, TtsConfig
from voiceplatform.logging import bind_call
from voiceplatform.providers import ProviderError, ProviderRegistry, TtsProvider, catalog
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.providers.chain import Attempt, Lazy, ProviderChain
from voiceplatform.providers.registry import RobotProviders, aclose_all
from voiceplatform.resampling import StreamResampler
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.recent import RecentTurns
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import SUPPORTED_SAMPLE_RATES, ControlInterrupt, LlmSentence, Message

from .metrics import (
    CHARS,
    FALLBACKS,
    ROBOT_CONFIG_ERRORS,
    SENTENCES,
    SENTENCES_DROPPED,
    SERVICE,
)
from .output import SentenceOutput
from .settings import TtsSettings
from .text import normalize_text
from .tracks import play_track

log = structlog.get_logger("vp_tts")

PROVIDER_ENTRIES = catalog.TTS
PROVIDERS = catalog.registry("tts")
PRELOADED = "festival"
# the default local voice: warmed at start where installed; absent, sentences fall through to festival
RHVOICE = "rhvoice"
# a robot whose config failed to load still speaks, with the local voices
LOCAL_CHAIN = TtsConfig(provider=RHVOICE, fallback=["festival", "espeak"])


class _ChainFailed(Exception):
    def __init__(self, kind: str, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retryable = retryable


class TtsService:
    name = SERVICE

    def __init__(
        self,
        settings: TtsSettings,
        robots: RobotRegistry | None = None,
        registry: ProviderRegistry = PROVIDERS,
    ) -> None:
        self.settings = settings
        self.robots = robots or RobotRegistry(settings.robots_dir)
        self.registry = registry
        self._bus: Bus | None = None
        self._tasks = TaskRegistry()
        self._interrupted = RecentTurns(settings.interrupt_memory_s)
        self._providers: dict[str, ProviderBase] = {}
        # cloud providers hold a robot's keys: one instance per (robot, provider), rebuilt on reload
        self._robot_providers: RobotProviders[TtsProvider] = RobotProviders()
        self._sentences: WorkSource | None = None
        self._control_sub: Subscription | None = None
        self._draining = False

    # ---- Service ------------------------------------------------------------------------------
    async def start(self, bus: Bus) -> None:
        self._bus = bus
        for reason in ("interrupted", "draining", "bad_sample_rate"):
            SENTENCES_DROPPED.labels(reason)  # series exist at 0 from the start
        if self.settings.festival_preload and PRELOADED in self.registry.names():
            try:
                await self._start_provider(PRELOADED)
            except ProviderError as exc:
                # sentences still go to the fallback chain; /health says not ready
                log.error("tts.preload_failed", provider=PRELOADED, error=str(exc)[:200])
        if self.settings.rhvoice_preload and RHVOICE in self.registry.names():
            try:
                await self._start_provider(RHVOICE)
            except ProviderError as exc:
                # not installed here (Debian non-free): robots fall through to festival
                log.warning("tts.rhvoice_unavailable", error=str(exc)[:300])
        self._control_sub = await bus.subscribe(subjects.ANY_CONTROL, self._on_control)
        spec = WorkSpec.of(CALL_EVENTS, subjects.queue_group("tts"), subjects.ANY_LLM_SENTENCE, self.settings)
        self._sentences = await take_work(bus, spec, self._on_sentence, self._exhausted)
        log.info("tts.started", providers=sorted(self._providers), ready=self.ready())

    async def drain(self, timeout: float) -> None:
        self._draining = True
        if self._sentences is not None:
            # sentences still running when the time is up are handed back to another instance
            await self._sentences.stop(timeout)
            self._sentences = None
        if not await self._tasks.wait_all(timeout):
            log.warning("tts.drain_cancelling", sentences=len(self._tasks))
            await self._tasks.cancel_all(self.settings.cancel_timeout_s)
        if self._control_sub is not None:
            await self._control_sub.unsubscribe()
            self._control_sub = None
        await self.close_providers()
        log.info("tts.drained")

    def ready(self) -> bool:
        if self._bus is None or self._draining:
            return False
        if self.settings.festival_preload and PRELOADED in self.registry.names():
            return self._provider_ready(self._providers.get(PRELOADED))
        return True

    def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "instance_id": self.settings.instance_id,
            "sentences_in_flight": len(self._tasks),
            "providers": sorted(self._providers),
        }
        for name, provider in self._providers.items():
            details = provider.health()
            if details:
                info[name] = details
        return info

    def asgi_app(self) -> None:
        return None

    # ---- providers ----------------------------------------------------------------------------
    def provider(self, name: str, robot: RobotConfig | None = None) -> TtsProvider:
        """Provider ``name``: process-wide for local engines, per robot for cloud ones."""
        cls = self.registry.load(name)
        if cls.scope == "process":
            return cast(TtsProvider, self._local(name, cls))
        if robot is None:
            raise ProviderError(
                name, "needs the robot's configuration, which failed to load", retryable=False
            )
        ctx = ProviderContext(robot=robot, settings=self.settings)
        return self._robot_providers.get(robot, name, lambda: cast(TtsProvider, cls.from_context(ctx)))

    def _local(self, name: str, cls: type[ProviderBase]) -> ProviderBase:
        found = self._providers.get(name)
        if found is None:
            found = cls.from_context(ProviderContext(settings=self.settings))
            self._providers[name] = found
        return found

    async def _start_provider(self, name: str) -> None:
        await self._local(name, self.registry.load(name)).start()

    @staticmethod
    def _provider_ready(provider: ProviderBase | None) -> bool:
        return provider is not None and provider.ready()

    async def close_providers(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        await aclose_all(providers)
        await self._robot_providers.aclose()

    # ---- handlers -----------------------------------------------------------------------------
    def was_interrupted(self, turn_id: str) -> bool:
        return turn_id in self._interrupted

    def _remember_interrupt(self, turn_id: str) -> None:
        self._interrupted.add(turn_id)

    async def _on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlInterrupt) and msg.turn_id:
            self._remember_interrupt(msg.turn_id)
            cancelled = await self._tasks.cancel(msg.turn_id, self.settings.cancel_timeout_s)
            if cancelled:
                SENTENCES.labels("interrupted").inc(cancelled)
                log.info("tts.turn_cancelled", call_id=msg.call_id, turn_id=msg.turn_id, sentences=cancelled)
        return None

    async def _on_sentence(self, env: Envelope, attempt: int = 1) -> None:
        """One sentence, start to end (the work is acknowledged when this returns)."""
        msg = env.message
        if not isinstance(msg, LlmSentence) or not msg.synthesize:
            return  # synthesize=False: a realtime model is already speaking it
        received_at = time.monotonic()
        reason = ""
        if self._draining:
            reason = "draining"
        elif self.was_interrupted(msg.turn_id):
            reason = "interrupted"
        elif msg.sample_rate not in SUPPORTED_SAMPLE_RATES:
            reason = "bad_sample_rate"
        if reason:
            SENTENCES_DROPPED.labels(reason).inc()
            log.info(
                "tts.sentence_dropped",
                call_id=msg.call_id,
                turn_id=msg.turn_id,
                index=msg.index,
                reason=reason,
            )
            if reason == "bad_sample_rate":
                # the gateway waits for this sentence: close it and say why
                await self._reject_bad_rate(msg)
            return
        log.info("tts.sentence_started", call_id=msg.call_id, turn_id=msg.turn_id, index=msg.index)
        task = self._tasks.spawn(
            self._run_sentence(msg, received_at), key=msg.turn_id, name=f"tts-{msg.turn_id}-{msg.index}"
        )
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()  # handed back (drain): another instance synthesizes it
            raise

    async def _exhausted(self, env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, LlmSentence) and self._bus is not None:
            detail = f"no tts instance finished sentence {msg.index}"
            await self._stage_error(msg, "worker_lost", detail, False)
            # close the sentence: the gateway plays what it has of the turn rather than wait for it
            await SentenceOutput(self._bus, msg, self.settings.chunk_ms, time.monotonic()).finish()

    async def _reject_bad_rate(self, msg: LlmSentence) -> None:
        assert self._bus is not None
        await self._stage_error(msg, "bad_sample_rate", f"unsupported sample rate {msg.sample_rate}", False)
        await SentenceOutput(self._bus, msg, self.settings.chunk_ms, time.monotonic()).finish()

    async def _stage_error(self, msg: LlmSentence, kind: str, detail: str, retryable: bool) -> None:
        assert self._bus is not None
        check_still_ours()  # a stalled original's failure is not the sentence's: the retry speaks it
        await publish_stage_error(
            self._bus,
            call_id=msg.call_id,
            stage="tts",
            kind=kind,
            detail=detail,
            turn_id=msg.turn_id,
            retryable=retryable,
        )

    # ---- one sentence -------------------------------------------------------------------------
    def _robot(self, robot: str) -> RobotConfig | None:
        try:
            return self.robots.get(robot)
        except RobotConfigError as exc:
            ROBOT_CONFIG_ERRORS.inc()
            log.warning("tts.robot_config_failed", robot=robot, error=str(exc)[:200])
            return None

    async def _run_sentence(self, msg: LlmSentence, received_at: float) -> None:
        assert self._bus is not None
        with bind_call(call_id=msg.call_id, turn_id=msg.turn_id):
            out = SentenceOutput(self._bus, msg, self.settings.chunk_ms, received_at)
            text = normalize_text(msg.text)
            if not text:
                await out.finish()
                SENTENCES.labels("empty").inc()
                return
            robot = self._robot(msg.robot)
            if msg.track and await play_track(robot, msg, out):
                await out.finish()
                SENTENCES.labels("track").inc()
                log.info("tts.track_done", index=msg.index, track=msg.track, chunks=out.seq)
                return
            cfg = robot.settings.tts if robot is not None else LOCAL_CHAIN
            try:
                tail = await self._synthesize_chain(text, cfg, robot, out)
            except _ChainFailed as failure:
                SENTENCES.labels("failed").inc()
                log.error(
                    "tts.sentence_failed", index=msg.index, kind=failure.kind, detail=failure.detail[:200]
                )
                await self._stage_error(msg, failure.kind, failure.detail, failure.retryable)
                await out.finish()  # the gateway must not wait for this sentence forever
                return
            await out.finish(tail)
            log.info(
                "tts.sentence_done",
                index=msg.index,
                provider=out.provider,
                chunks=out.seq,
                audio_ms=round(out.audio_bytes / 2 / out.sample_rate * 1000),
                first_audio_ms=round(out.first_audio_ms or 0.0, 1),
                pii_text=text,
            )

    async def _synthesize_chain(
        self, text: str, cfg: TtsConfig, robot: RobotConfig | None, out: SentenceOutput
    ) -> bytes:
        """Run the robot's chain (see ``voiceplatform.providers.chain``); returns the resampler's tail."""
        sentence = out.sentence
        names = list(dict.fromkeys([cfg.provider, *cfg.fallback]))
        chain: ProviderChain[TtsProvider] = ProviderChain(
            "tts",
            [Lazy(name, functools.partial(self._bound, name, robot)) for name in names],
            bus=out.bus,
            call_id=sentence.call_id,
            turn_id=sentence.turn_id,
            first_chunk_timeout_s=cfg.first_audio_timeout_s,
            output_word="audio",
            fallbacks=FALLBACKS,
        )
        resampler = StreamResampler(out.sample_rate, out.sample_rate)

        def open_stream(attempt: Attempt[TtsProvider]) -> AsyncIterator[bytes]:
            nonlocal resampler
            out.provider = attempt.provider.name
            attempt.usage.characters = len(text)  # what a vendor bills, failed attempts included
            resampler = StreamResampler(attempt.provider.sample_rate, out.sample_rate)
            return attempt.provider.stream_synthesize(text, cfg.voice)

        async def speak(attempt: Attempt[TtsProvider], pcm: bytes) -> None:
            await out.audio(resampler.feed(pcm))

        # once audio went out for a sentence its voice never changes: the sentence ends short
        outcome = await chain.run(open_stream, speak, committed=lambda: out.audio_out)
        failure = outcome.failure
        if failure is not None:
            raise _ChainFailed(failure.kind, failure.detail, failure.retryable)
        CHARS.labels(outcome.provider).inc(len(text))
        SENTENCES.labels("fallback" if outcome.failures else "ok").inc()
        return resampler.flush()

    def _bound(self, name: str, robot: RobotConfig | None) -> TtsProvider:
        """Provider ``name`` for ``robot`` (a process-wide engine gets the robot's options bound)."""
        provider = self.provider(name, robot)
        if isinstance(provider, ProviderBase):
            return cast(TtsProvider, provider.for_robot(robot))
        return provider
