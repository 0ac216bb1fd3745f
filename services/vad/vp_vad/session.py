"""One call's VAD: audio frames in, ``vad.speech_started`` / ``vad.speech_ended`` out."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

import structlog

from voiceplatform import metrics, subjects
from voiceplatform.audio import pcm_to_array
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.config import VadConfig
from voiceplatform.logging import bind_call
from voiceplatform.providers.interfaces import VadModel
from voiceplatform.wire import AudioChunk, CallEnded, Message, VadSpeechEnded, VadSpeechStarted

from .metrics import FRAME_PROCESSING_MS, SERVICE
from .providers import hysteresis
from .segmenter import FrameScorer, Segmenter, SegmentEvent, SpeechEnd, SpeechStart

log = structlog.get_logger("vp_vad.session")

OnCallEnded = Callable[[str], Awaitable[None]]


class VadSession:
    """Subscribes to one call's audio and lifecycle; scores frames in-line (well under 1 ms each)."""

    def __init__(
        self,
        bus: Bus,
        call_id: str,
        sample_rate: int,
        cfg: VadConfig,
        model: VadModel | None,
        on_call_ended: OnCallEnded,
    ) -> None:
        self.bus = bus
        self.call_id = call_id
        self.sample_rate = sample_rate
        self.cfg = cfg
        self.enabled = cfg.enabled and model is not None
        self.provider = model.name if model is not None else "none"
        self._scorer = FrameScorer(model, sample_rate) if model is not None else None
        on, off = hysteresis(cfg)
        self.segmenter = Segmenter(cfg.min_speech_frames, cfg.silence_frames, on, off)
        self._on_call_ended = on_call_ended
        self._subs: list[Subscription] = []
        self._warned: set[str] = set()
        self._last_seq: int | None = None
        self._turns = 0
        self.turn_id = ""
        self.frames = 0
        self.dropped = 0
        self.last_activity = time.monotonic()
        self.closed = False
        self._vad_subject = subjects.vad(call_id)
        self._frames_in = metrics.FRAMES_IN.labels(SERVICE)
        self._frame_ms = FRAME_PROCESSING_MS.labels(self.provider)

    async def start(self) -> None:
        self._subs.append(await self.bus.subscribe(subjects.lifecycle(self.call_id), self._on_lifecycle))
        # audio is followed even when disabled: it proves the call is alive (see the idle reaper)
        self._subs.append(await self.bus.subscribe(subjects.audio_in(self.call_id), self._on_audio))
        with bind_call(call_id=self.call_id):
            log.info(
                "vad.session_started",
                provider=self.provider,
                sample_rate=self.sample_rate,
                enabled=self.enabled,
            )

    def _drop(self, reason: str, subject: str, **detail: object) -> None:
        self.dropped += 1
        metrics.MESSAGES_DROPPED.labels(SERVICE, metrics.stage_of(subject), reason).inc()
        if reason not in self._warned:  # once per call per reason: a broken sender would flood the log
            self._warned.add(reason)
            with bind_call(call_id=self.call_id):
                log.warning("vad.frame_dropped", reason=reason, **detail)

    async def _on_audio(self, env: Envelope) -> Message | None:
        chunk = env.message
        if not isinstance(chunk, AudioChunk):
            self._drop("unexpected_type", env.subject, type=chunk.type_name)
            return None
        problem = chunk.problem(self.sample_rate)
        if problem is not None:
            self._drop(
                problem, env.subject, seq=chunk.seq, sample_rate=chunk.sample_rate, size=len(chunk.pcm)
            )
            return None
        if self._last_seq is not None and chunk.seq <= self._last_seq:
            self._drop("out_of_order", env.subject, seq=chunk.seq, last_seq=self._last_seq)
            return None
        if not self.enabled:
            self._last_seq = chunk.seq
            self.last_activity = time.monotonic()
            return None
        for event in self.process(chunk.seq, chunk.pcm):
            await self._publish(event)
        return None

    def process(self, seq: int, pcm: bytes) -> list[SegmentEvent]:
        """Score one validated frame and advance the segmenter (synchronous, timed)."""
        assert self._scorer is not None
        started = time.perf_counter()
        if self._last_seq is not None and seq > self._last_seq + 1:
            self._scorer.discontinuity()
        self._last_seq = seq
        probability = self._scorer.score(pcm_to_array(pcm))
        events = self.segmenter.push(seq, probability)
        self._frame_ms.observe((time.perf_counter() - started) * 1000.0)
        self._frames_in.inc()
        self.frames += 1
        self.last_activity = time.monotonic()
        return events

    async def _publish(self, event: SegmentEvent) -> None:
        if isinstance(event, SpeechStart):
            self._turns += 1
            self.turn_id = f"{self.call_id}-t{self._turns}-{secrets.token_hex(2)}"
            msg: Message = VadSpeechStarted(
                call_id=self.call_id, turn_id=self.turn_id, audio_offset_ms=event.offset_ms
            )
            with bind_call(call_id=self.call_id, turn_id=self.turn_id):
                log.info("vad.speech_started", audio_offset_ms=event.offset_ms)
        else:
            msg = VadSpeechEnded(
                call_id=self.call_id,
                turn_id=self.turn_id,
                audio_offset_ms=event.offset_ms,
                speech_ms=event.speech_ms,
            )
            with bind_call(call_id=self.call_id, turn_id=self.turn_id):
                log.info("vad.speech_ended", audio_offset_ms=event.offset_ms, speech_ms=event.speech_ms)
        await self.bus.publish(self._vad_subject, msg)

    async def _on_lifecycle(self, env: Envelope) -> Message | None:
        if isinstance(env.message, CallEnded):
            # closing unsubscribes this very handler: the owner does it in a task of its own
            await self._on_call_ended(self.call_id)
        return None

    async def close(self, reason: str) -> None:
        """Stop listening; an utterance still open is ended so every start has its end."""
        if self.closed:
            return
        self.closed = True
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        end: SpeechEnd | None = self.segmenter.flush() if self.enabled else None
        if end is not None:
            await self._publish(end)
        with bind_call(call_id=self.call_id):
            log.info(
                "vad.session_closed",
                reason=reason,
                frames=self.frames,
                dropped=self.dropped,
                turns=self._turns,
            )
