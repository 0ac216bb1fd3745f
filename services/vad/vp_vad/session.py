"""One call's VAD: audio frames in, ``vad.speech_started/paused/resumed/ended`` out.

With an end-of-turn model, a pause sends the turn's audio (a bounded 8 s ring) to the model in the
worker thread; ``vad.speech_paused`` goes out with the model's probability when it answers, and the
answer sets the hang-over. A pause the caller ends before the model answered is never published
(nor its resume). Frames and model answers publish under one lock, so events keep their order: a
live frame is scored as the bus reads it (an inline subscription), and its events, if any, wait
for the lock ahead of anything else.

Failover: a session that takes over a call (``replay``) first runs the gateway's replay of the audio
since the last turn end; a turn still open there is taken over under its ``turn_id`` (the frames
before its start only warm the model up), so the caller's utterance goes on as one turn. Events
carry the assignment ``epoch``; once ``assign.changed`` says the call moved on, nothing more goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from voiceplatform import load, metrics, subjects, tracing
from voiceplatform.audio import pcm_to_array
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.config import VadConfig
from voiceplatform.logging import bind_call
from voiceplatform.providers.interfaces import VadModel
from voiceplatform.runtime.replay import REPLAY_WAIT_S, ReplayGate
from voiceplatform.wire import (
    AudioChunk,
    AudioReplay,
    CallEnded,
    Message,
    OwnerChanged,
    ResumeTurn,
    VadSpeechEnded,
    VadSpeechStarted,
)
from voiceplatform.wire.messages import FRAME_MS, VadSpeechPaused, VadSpeechResumed, frame_bytes

from .eot import WINDOW_S, EotModel, executor
from .metrics import EOT_INFERENCE_MS, EOT_RESULTS, EOT_WAIT_MS, FRAME_PROCESSING_MS, SERVICE, TURNS_ENDED
from .providers import hysteresis
from .segmenter import (
    FrameScorer,
    Hangover,
    Segmenter,
    SegmentEvent,
    SpeechEnd,
    SpeechPause,
    SpeechResume,
    SpeechStart,
)

log = structlog.get_logger("vp_vad.session")

OnCallEnded = Callable[[str], Awaitable[None]]
VadEvent = VadSpeechStarted | VadSpeechEnded | VadSpeechPaused | VadSpeechResumed

# audio in front of the confirmed start that goes to the end-of-turn model with the turn
_EOT_PRE_ROLL_FRAMES = 25


def build_segmenter(cfg: VadConfig, with_model: bool) -> Segmenter:
    on, off = hysteresis(cfg)
    pause = max(1, cfg.pause_ms // FRAME_MS)
    hangover = None
    if with_model:
        short = pause + cfg.eot_short_ms // FRAME_MS
        hangover = Hangover(short, max(short, cfg.eot_long_ms // FRAME_MS), cfg.eot_threshold)
    return Segmenter(
        cfg.min_speech_frames,
        cfg.silence_frames,
        on,
        off,
        pause_frames=pause,
        hangover=hangover,
        max_turn_frames=round(cfg.max_turn_s * 1000 / FRAME_MS),
    )


@dataclass
class _Pause:
    event: SpeechPause
    published: bool = False
    stale: threading.Event = field(default_factory=threading.Event)  # the worker skips stale jobs
    task: asyncio.Task[None] | None = None


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
        eot: EotModel | None = None,
        *,
        epoch: int = 0,
        replay: bool = False,
        on_moved: Callable[[VadSession], Awaitable[None]] | None = None,
    ) -> None:
        self.bus = bus
        self.call_id = call_id
        self.sample_rate = sample_rate
        self.cfg = cfg
        self.enabled = cfg.enabled and model is not None
        self.provider = model.name if model is not None else "none"
        self._scorer = FrameScorer(model, sample_rate) if model is not None else None
        self.eot = eot if self.enabled else None
        self.segmenter = build_segmenter(cfg, self.eot is not None)
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
        self._lock = asyncio.Lock()
        self._others = 0  # coroutines other than the live audio holding or waiting for the lock
        self._unsent: deque[SegmentEvent] = deque()  # scored without the lock, published under it
        self._pause: _Pause | None = None
        # (seq, samples) of the last 8 s, kept only for the end-of-turn model
        self._ring: deque[tuple[int, np.ndarray]] = deque(maxlen=WINDOW_S * 1000 // FRAME_MS)
        self._vad_subject = subjects.vad(call_id)
        self._frames_in = metrics.FRAMES_IN.labels(SERVICE)
        self._frame_ms = FRAME_PROCESSING_MS.labels(self.provider)
        self.epoch = epoch
        self.moved = False  # the call moved to a newer owner: publish nothing more
        self._on_moved = on_moved
        self._gate = ReplayGate("vad", epoch, replay)
        self._adopt: ResumeTurn | None = None  # the open turn taken over, until its start is reached
        self._replay_timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subs.append(await self.bus.subscribe(subjects.lifecycle(self.call_id), self._on_lifecycle))
        if self._gate.replaying:
            self._subs.append(
                await self.bus.subscribe(subjects.audio_replay(self.call_id, "vad"), self._on_replay)
            )
            self._replay_timer = asyncio.create_task(
                self._replay_deadline(), name=f"vad-replay-{self.call_id}"
            )
        # audio is followed even when disabled: it proves the call is alive (see the idle reaper)
        self._subs.append(await self.bus.subscribe_inline(subjects.audio_in(self.call_id), self._on_audio))
        with bind_call(call_id=self.call_id):
            log.info(
                "vad.session_started",
                provider=self.provider,
                sample_rate=self.sample_rate,
                enabled=self.enabled,
                eot_model=self.eot.name if self.eot is not None else "none",
            )

    def _drop(self, reason: str, subject: str, **detail: object) -> None:
        self.dropped += 1
        metrics.MESSAGES_DROPPED.labels(SERVICE, metrics.stage_of(subject), reason).inc()
        if reason not in self._warned:  # once per call per reason: a broken sender would flood the log
            self._warned.add(reason)
            with bind_call(call_id=self.call_id):
                log.warning("vad.frame_dropped", reason=reason, **detail)

    def _on_audio(self, env: Envelope) -> Awaitable[None] | None:
        """A chunk as the bus reads it (an inline subscription); what has to wait is returned."""
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
        frames = chunk.frames()
        # a v2 chunk may start before frames already fed (the frames a replay also carried): only
        # one with nothing new is stale; _feed skips the old frames of the others
        if self._last_seq is not None and frames[-1][0] <= self._last_seq:
            self._drop("out_of_order", env.subject, seq=chunk.seq, last_seq=self._last_seq)
            return None
        if self._gate.hold(chunk):
            return None
        return self._take(frames, 0)

    def _take(self, frames: list[tuple[int, bytes]], first: int) -> Awaitable[None] | None:
        """Frames from ``first`` on. A live frame while nothing else wants the lock (the common
        case, 50 a second per call) is scored there and then, as nothing else runs meanwhile. Its
        events, if any, wait in ``_unsent`` for the lock, and the rest goes to a coroutine."""
        for i in range(first, len(frames)):
            seq, pcm = frames[i]
            if self._others or self._adopt is not None or not self.enabled:
                return self._take_locked(frames, i)
            if self._is_new(seq):
                events = self.process(seq, pcm)
                if events:
                    self._unsent.extend(events)
                    return self._take_locked(frames, i + 1)
        return None

    async def _take_locked(self, frames: list[tuple[int, bytes]], i: int) -> None:
        """Under the lock: the events waiting first, then frame ``i`` (if any); the rest as ``_take``."""
        async with self._lock:
            await self._publish_unsent()
            if i < len(frames):
                await self._feed(*frames[i])
        rest = self._take(frames, i + 1)
        if rest is not None:
            await rest

    async def _publish_unsent(self) -> None:
        """The live audio's events not yet published, before anything else publishes (the caller
        holds the lock): a model's answer or the close that came meanwhile sees them gone out."""
        while self._unsent:
            await self._emit(self._unsent.popleft())

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The lock, for everything but the live audio (which skips it while ``_others`` is 0)."""
        self._others += 1
        try:
            async with self._lock:
                await self._publish_unsent()
                yield
        finally:
            self._others -= 1

    def _is_new(self, seq: int) -> bool:
        """A frame not heard yet (replays and redeliveries repeat frames)."""
        return self._last_seq is None or seq > self._last_seq

    async def _feed(self, seq: int, pcm: bytes) -> None:
        """One frame in order (the caller holds the lock): live, replayed, or held during a replay."""
        if not self._is_new(seq):
            return
        if not self.enabled:
            self._last_seq = seq
            self.last_activity = time.monotonic()
            return
        if self._adopt is not None:
            start_seq = self._adopt.start_ms // FRAME_MS
            if seq < start_seq:  # before the taken-over turn: the model hears it, the segmenter not
                assert self._scorer is not None
                self._last_seq = seq
                samples = pcm_to_array(pcm)
                if self.eot is not None:
                    self._ring.append((seq, samples))  # the end-of-turn model's pre-roll
                self._scorer.score(samples)
                return
            self._take_over(self._adopt, seq)
        for event in self.process(seq, pcm):
            await self._emit(event)

    def _take_over(self, turn: ResumeTurn, seq: int) -> None:
        self._adopt = None
        self._turns += 1
        self.turn_id = turn.turn_id
        self.segmenter.adopt(turn.start_ms // FRAME_MS, seq)
        with bind_call(call_id=self.call_id, turn_id=self.turn_id):
            log.info("vad.turn_taken_over", start_ms=turn.start_ms, at_ms=seq * FRAME_MS)

    async def _on_replay(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, AudioReplay):
            return None
        frames = self._gate.take(msg)
        if not frames and not (msg.last and msg.epoch == self.epoch):
            return None
        async with self._locked():
            if self._adopt is None and self._last_seq is None and self._gate.turns:
                self._adopt = self._gate.turns[-1]
            size = frame_bytes(self.sample_rate)
            for seq, pcm in frames:
                if len(pcm) == size:
                    await self._feed(seq, pcm)
            if msg.last:
                await self._go_live("complete")
        return None

    async def _go_live(self, outcome: str) -> None:
        """End the replay: the live frames held meanwhile, then live (the caller holds the lock)."""
        for chunk in self._gate.finish(outcome):
            for seq, pcm in chunk.frames():
                await self._feed(seq, pcm)
        if self._replay_timer is not None and self._replay_timer is not asyncio.current_task():
            self._replay_timer.cancel()

    async def _replay_deadline(self) -> None:
        await asyncio.sleep(REPLAY_WAIT_S)
        async with self._locked():
            await self._go_live("timeout")

    def process(self, seq: int, pcm: bytes) -> list[SegmentEvent]:
        """Score one validated frame and advance the segmenter (synchronous, timed)."""
        assert self._scorer is not None
        started = time.perf_counter()
        if self._last_seq is not None and seq > self._last_seq + 1:
            self._scorer.discontinuity()
        self._last_seq = seq
        samples = pcm_to_array(pcm)
        if self.eot is not None:
            self._ring.append((seq, samples))
        probability = self._scorer.score(samples)
        events = self.segmenter.push(seq, probability)
        self._frame_ms.observe((time.perf_counter() - started) * 1000.0)
        self._frames_in.inc()
        self.frames += 1
        self.last_activity = time.monotonic()
        return events

    async def _emit(self, event: SegmentEvent) -> None:
        """Publish one segmenter event (the caller holds the lock)."""
        if isinstance(event, SpeechStart):
            self._turns += 1
            self.turn_id = f"{self.call_id}-t{self._turns}-{secrets.token_hex(2)}"
            with bind_call(call_id=self.call_id, turn_id=self.turn_id):
                log.info("vad.speech_started", audio_offset_ms=event.offset_ms)
            await self._send(
                VadSpeechStarted(call_id=self.call_id, turn_id=self.turn_id, audio_offset_ms=event.offset_ms)
            )
        elif isinstance(event, SpeechPause):
            self._pause = _Pause(event)
            if self.eot is None:
                await self._publish_pause(self._pause, -1.0)
            else:
                self._pause.task = asyncio.create_task(
                    self._run_eot(self._pause, self._turn_audio(event)), name=f"vad-eot-{self.call_id}"
                )
        elif isinstance(event, SpeechResume):
            pause, self._pause = self._pause, None
            if pause is not None:
                pause.stale.set()
                if pause.published:
                    await self._send(
                        VadSpeechResumed(
                            call_id=self.call_id, turn_id=self.turn_id, audio_offset_ms=event.offset_ms
                        )
                    )
        else:
            await self._publish_end(event)

    async def _publish_end(self, event: SpeechEnd, reason: str | None = None) -> None:
        pause, self._pause = self._pause, None
        if pause is not None:
            pause.stale.set()
            if not pause.published:  # every end follows its pause (the model did not answer in time)
                await self._publish_pause(pause, -1.0)
        if reason is None:
            reason = "truncated" if event.truncated else self._end_reason(event.eot_probability)
        TURNS_ENDED.labels(reason).inc()
        with bind_call(call_id=self.call_id, turn_id=self.turn_id):
            log_fn = log.warning if event.truncated else log.info
            log_fn(
                "vad.turn_truncated" if event.truncated else "vad.speech_ended",
                audio_offset_ms=event.offset_ms,
                speech_ms=event.speech_ms,
                eot_probability=round(event.eot_probability, 3),
                reason=reason,
            )
        await self._send(
            VadSpeechEnded(
                call_id=self.call_id,
                turn_id=self.turn_id,
                audio_offset_ms=event.offset_ms,
                speech_ms=event.speech_ms,
                eot_probability=event.eot_probability,
                truncated=event.truncated,
            )
        )
        hang_ms = ((self._last_seq or 0) + 1) * FRAME_MS - event.offset_ms  # speech end → decision
        tracing.span("vad.end", self.call_id, self.turn_id, hang_ms, provider=self.provider, reason=reason)

    def _end_reason(self, eot_probability: float) -> str:
        if eot_probability < 0:
            return "silence"
        return "model_short" if eot_probability >= self.cfg.eot_threshold else "model_long"

    async def _publish_pause(self, pause: _Pause, eot_probability: float) -> None:
        pause.published = True
        ev = pause.event
        with bind_call(call_id=self.call_id, turn_id=self.turn_id):
            log.info(
                "vad.speech_paused", audio_offset_ms=ev.offset_ms, eot_probability=round(eot_probability, 3)
            )
        await self._send(
            VadSpeechPaused(
                call_id=self.call_id,
                turn_id=self.turn_id,
                audio_offset_ms=ev.offset_ms,
                speech_ms=ev.speech_ms,
                eot_probability=eot_probability,
            )
        )

    def _turn_audio(self, pause: SpeechPause) -> np.ndarray:
        first = pause.start_ms // FRAME_MS - _EOT_PRE_ROLL_FRAMES
        parts = [samples for seq, samples in self._ring if first <= seq <= pause.seq]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    async def _run_eot(self, pause: _Pause, audio: np.ndarray) -> None:
        assert self.eot is not None
        eot, rate = self.eot, self.sample_rate
        asked = time.perf_counter()

        def job() -> float | None:
            if pause.stale.is_set():  # the caller resumed while this waited for the worker
                return None
            started = time.perf_counter()
            p = eot.complete_probability(audio, rate)
            EOT_INFERENCE_MS.observe((time.perf_counter() - started) * 1000.0)
            return p

        probability: float | None
        try:
            probability = await asyncio.get_running_loop().run_in_executor(executor(), job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken model must not take the call down: fall back to silence
            EOT_RESULTS.labels("error").inc()
            with bind_call(call_id=self.call_id, turn_id=self.turn_id):
                log.warning("vad.eot_failed", error=str(exc)[:200], error_type=type(exc).__name__)
            probability = None
        EOT_WAIT_MS.observe((time.perf_counter() - asked) * 1000.0)
        load.observe_turn(SERVICE, time.perf_counter() - asked)
        async with self._locked():
            if self.closed or pause.stale.is_set() or self._pause is not pause:
                EOT_RESULTS.labels("stale").inc()
                return
            if probability is not None:
                complete = probability >= self.cfg.eot_threshold
                EOT_RESULTS.labels("complete" if complete else "incomplete").inc()
            await self._publish_pause(pause, -1.0 if probability is None else probability)
            for event in self.segmenter.set_eot(pause.event.pause_id, probability):
                await self._emit(event)

    async def _send(self, msg: VadEvent) -> None:
        if self.moved:
            return
        msg.epoch = self.epoch
        await self.bus.publish(self._vad_subject, msg)

    async def _on_lifecycle(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, OwnerChanged) and msg.role == "vad" and msg.epoch > self.epoch:
            self.moved = True
            with bind_call(call_id=self.call_id):
                log.warning("vad.call_moved", epoch=self.epoch, new_epoch=msg.epoch, owner=msg.instance_id)
            if self._on_moved is not None:
                await self._on_moved(self)
        elif isinstance(msg, CallEnded):
            # closing unsubscribes this very handler: the owner does it in a task of its own
            await self._on_call_ended(self.call_id)
        return None

    async def close(self, reason: str) -> None:
        """Stop listening; an utterance still open is ended so every start has its end, unless the
        call goes on elsewhere (moved, draining): the next owner ends it."""
        if self.closed:
            return
        self.closed = True  # a model answer arriving from now on is dropped
        # the call goes on at another owner, which the gateway replays the open utterance to: no flush
        self.moved = self.moved or reason in ("moved", "draining")
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._replay_timer is not None:
            self._replay_timer.cancel()
        async with self._locked():
            pending = self._pause.task if self._pause is not None else None
            end: SpeechEnd | None = self.segmenter.flush() if self.enabled and not self.moved else None
            if end is not None:
                await self._publish_end(end, "flush")
        if pending is not None:
            pending.cancel()
        with bind_call(call_id=self.call_id):
            log.info(
                "vad.session_closed",
                reason=reason,
                frames=self.frames,
                dropped=self.dropped,
                turns=self._turns,
            )
