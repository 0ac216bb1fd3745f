"""Per-call ASR state: a rolling frame buffer, VAD-bounded segments, one recognition job per turn.

Provider-agnostic: the session hands a segment to its provider chain (see ``recognition``) and
publishes what it says. A segment is the turn's speech plus ``pre_roll_ms`` before the VAD start
(soft onsets score below the VAD threshold) and ``post_roll_ms`` after its end (the VAD's end offset
sits on the last loud frame: word endings fade below it).

Speculation: on ``vad.speech_paused`` the job starts at once on the speech so far; a
``vad.speech_ended`` with the same offset publishes that result as soon as it is ready (no second
decode); a ``vad.speech_resumed`` or an end at another offset discards it (its provider usage is
published as ``cancelled``). Continuation: ``control.interrupt`` with reason ``continued`` makes the
continuing turn's segment start at the continued turn's start (``TurnBook``), restarting a job that
already began on the shorter audio; its final lists the merged turns.
Audio and VAD events arrive on separate subscriptions, so when a VAD event arrives the last frames of
the utterance may still be on their way; the job waits for them (briefly).
Ownership (fencing of replaced VAD owners, taking a call over with the gateway's replay): ``intake``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from voiceplatform import load, metrics, subjects, tracing
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.clock import now_ms
from voiceplatform.logging import bind_call
from voiceplatform.providers import AsrProvider
from voiceplatform.providers.chain import UsageReport, publish_report
from voiceplatform.runtime import TaskRegistry
from voiceplatform.runtime.replay import REPLAY_WAIT_S
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import (
    AsrFinal,
    AudioChunk,
    AudioReplay,
    CallEnded,
    ControlInterrupt,
    VadSpeechEnded,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
)
from vp_asr.framebuffer import FrameBuffer
from vp_asr.intake import OwnerIntake, VadEvent, ended_of
from vp_asr.metrics import MERGES, SEGMENTS, SERVICE, SPECULATIVE
from vp_asr.recognition import Failure, Outcome, joined, recognize, run_chain
from vp_asr.turns import TurnBook

__all__ = ["AsrSession", "SessionOptions", "joined", "recognize"]

log = structlog.get_logger("vp_asr.session")

# speculative jobs waiting for their turn's end; more than a few means lost vad.speech_ended events
_MAX_OPEN_TURNS = 8
# turns whose final is out, remembered to tell a too-late continuation from an unknown one
_MAX_PUBLISHED = 32
_FRAMES_IN = metrics.FRAMES_IN.labels(SERVICE)  # bound once: 50 frames a second per call


@dataclass(frozen=True, slots=True)
class SessionOptions:
    sample_rate: int
    language: str = "ru-RU"
    pre_roll_ms: int = 200
    post_roll_ms: int = 200
    tail_wait_ms: int = 300
    buffer_ms: int = 32_000
    # whisper decodes 30 s in one window; a longer merged turn keeps its newest 30 s
    max_segment_ms: int = 30_000
    min_speech_ms: int = 200
    speculate: bool = True
    # a pause whose end-of-turn probability is below this (when the VAD has a model) is not worth a
    # decode: a discarded decode still holds the model until it ends, delaying the next turn
    speculate_min_eot: float = 0.2


@dataclass(slots=True, eq=False)
class _Job:
    """The recognition of one turn's segment ``[from_ms - pre_roll, offset_ms + post_roll)``."""

    turn_id: str
    offset_ms: int
    from_ms: int
    speech_ms: int
    merged: list[str]
    speculative: bool
    ended: VadSpeechEnded | None = None
    received: float = 0.0  # monotonic time the turn's end arrived
    turn_over: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def end(self, ended: VadSpeechEnded, received: float) -> None:
        self.ended, self.received = ended, received
        self.turn_over.set()


class AsrSession:
    def __init__(
        self,
        bus: Bus,
        call_id: str,
        options: SessionOptions,
        provider: AsrProvider | None,
        tasks: TaskRegistry,
        on_call_ended: Callable[[str], None],
        provider_problem: str = "",
        *,
        fallbacks: Sequence[AsrProvider] = (),
        epoch: int = 0,
        vad_epoch: int = 0,
        replay: bool = False,
        on_moved: Callable[[AsrSession], None] | None = None,
    ) -> None:
        self.bus = bus
        self.call_id = call_id
        self.options = options
        self.provider = provider
        # tried in order on every segment until one gives a transcript
        self.chain: list[AsrProvider] = [p for p in (provider, *fallbacks) if p is not None]
        # why there is no provider (unknown name, failed construction): reported on every turn
        self.provider_problem = provider_problem
        self.tasks = tasks
        self._on_call_ended = on_call_ended
        self.buffer = FrameBuffer(options.sample_rate, options.buffer_ms)
        self.book = TurnBook()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._published: OrderedDict[str, None] = OrderedDict()
        self._subs: list[Subscription] = []
        self.closed = False
        self.epoch = epoch  # stamped on every asr.final (the gateway fences older owners)
        self.intake = OwnerIntake(call_id, epoch, vad_epoch, replay)
        self._on_moved = on_moved
        self._replay_timer: asyncio.Task[None] | None = None

    @property
    def provider_name(self) -> str:
        return self.chain[0].name if self.chain else "none"

    async def open(self) -> None:
        self._subs = [
            await self.bus.subscribe_inline(subjects.audio_in(self.call_id), self._on_audio),
            await self.bus.subscribe(subjects.vad(self.call_id), self._on_vad),
            await self.bus.subscribe(subjects.control(self.call_id), self._on_control),
            await self.bus.subscribe(subjects.lifecycle(self.call_id), self._on_lifecycle),
        ]
        if self.intake.gate.replaying:
            replay = subjects.audio_replay(self.call_id, "asr")
            self._subs.append(await self.bus.subscribe(replay, self._on_replay))
            self._replay_timer = asyncio.create_task(
                self._replay_deadline(), name=f"asr-replay-{self.call_id}"
            )

    async def close(self) -> None:
        """Stop listening and cancel this call's recognitions. Never call from this session's handlers."""
        if self.closed:
            return
        self.closed = True
        if self._replay_timer is not None:
            self._replay_timer.cancel()
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []
        await self.tasks.cancel(self.call_id)
        self._jobs.clear()
        self.buffer.clear()

    # ---- handlers (short: long work goes to a task) -------------------------------------------
    def _on_audio(self, env: Envelope) -> None:
        """A chunk as the bus reads it (an inline subscription): into the buffer, nothing to wait for."""
        chunk = env.message
        if not isinstance(chunk, AudioChunk):
            return
        problem = chunk.problem(self.options.sample_rate)
        if problem is None and chunk.seq < 0:
            problem = "negative_seq"
        if problem is not None:
            metrics.MESSAGES_DROPPED.labels(SERVICE, "audio.in", problem).inc()
            log.debug("asr.frame_dropped", call_id=self.call_id, reason=problem, seq=chunk.seq)
            return
        frames = chunk.frames()
        _FRAMES_IN.inc(len(frames))
        for seq, pcm in frames:
            self.buffer.add(seq, pcm)

    async def _on_replay(self, env: Envelope) -> None:
        msg = env.message
        if self.closed or not isinstance(msg, AudioReplay):
            return
        for seq, pcm in self.intake.gate.take(msg):
            if seq >= 0 and len(pcm) == len(self.buffer.silence):
                self.buffer.add(seq, pcm)
        if msg.last and msg.epoch == self.epoch:
            self._go_live("complete")

    async def _replay_deadline(self) -> None:
        await asyncio.sleep(REPLAY_WAIT_S)
        if not self.closed:
            self._go_live("timeout")

    def _go_live(self, outcome: str) -> None:
        """The replay is in: the old owner's unfinished turns, then the VAD events held meanwhile."""
        if not self.intake.gate.replaying:
            return
        turns = self.intake.gate.turns
        held = self.intake.release(outcome)
        if self._replay_timer is not None and self._replay_timer is not asyncio.current_task():
            self._replay_timer.cancel()
        with bind_call(call_id=self.call_id):
            log.info("asr.took_over", turns=[t.turn_id for t in turns], frames=self.intake.gate.frames)
        for turn in turns:
            if self.book.span(turn.turn_id) is None:
                self.book.started(turn.turn_id, turn.start_ms)
            if turn.end_ms >= 0 and turn.turn_id not in self._jobs and turn.turn_id not in self._published:
                self._ended(ended_of(self.call_id, turn), time.monotonic())
        for event in held:
            self._apply_vad(event)

    async def _on_vad(self, env: Envelope) -> None:
        msg = env.message
        if self.closed or not isinstance(msg, VadEvent) or not self.intake.vad_current(msg):
            return
        if not self.intake.hold(msg):
            self._apply_vad(msg)

    def _apply_vad(self, msg: VadEvent) -> None:
        if isinstance(msg, VadSpeechStarted):
            self.book.started(msg.turn_id, msg.audio_offset_ms)
        elif isinstance(msg, VadSpeechPaused):
            self._paused(msg)
        elif isinstance(msg, VadSpeechResumed):
            job = self._jobs.get(msg.turn_id)
            if job is not None and job.ended is None:
                self._discard(job, "resumed")
        elif isinstance(msg, VadSpeechEnded):
            job = self._jobs.get(msg.turn_id)
            if job is not None and job.ended is not None and job.ended.audio_offset_ms == msg.audio_offset_ms:
                return  # the end of a turn taken over, heard again live
            self._ended(msg, time.monotonic())

    async def _on_control(self, env: Envelope) -> None:
        msg = env.message
        if self.closed or not isinstance(msg, ControlInterrupt) or msg.reason != "continued":
            return
        if not msg.by_turn_id:
            return
        with bind_call(call_id=self.call_id, turn_id=msg.by_turn_id):
            span = self.book.continued(msg.turn_id, msg.by_turn_id)
            job = self._jobs.get(msg.by_turn_id)
            if span is None:
                # the continuing turn has not started yet (applied when it does), or the continued
                # turn is too old to be remembered
                known = self.book.span(msg.turn_id) is not None
                MERGES.labels("pending" if known else "unknown_turn").inc()
                log.info("asr.merge_deferred", continued=msg.turn_id, known=known)
                return
            if msg.by_turn_id in self._published and job is None:
                MERGES.labels("too_late").inc()
                log.warning("asr.merge_too_late", continued=msg.turn_id)
                return
            log.info("asr.merged", continued=msg.turn_id, merged=span.merged, from_ms=span.from_ms)
            if job is None:
                MERGES.labels("ahead").inc()
                return
            # recognition already began on the shorter audio: start over on the merged span
            MERGES.labels("restarted").inc()
            self._discard(job, "merged")
            restarted = _Job(
                job.turn_id, job.offset_ms, span.from_ms, job.speech_ms, list(span.merged), job.speculative
            )
            if job.ended is not None:
                restarted.end(job.ended, job.received)
            self._start(restarted)

    async def _on_lifecycle(self, env: Envelope) -> None:
        if self.intake.owner_changed(env.message) and self._on_moved is not None:
            self._on_moved(self)
        elif isinstance(env.message, CallEnded) and not self.closed:
            self._on_call_ended(self.call_id)

    # ---- jobs -------------------------------------------------------------------------------
    def _span(self, turn_id: str, end_ms: int, speech_ms: int) -> tuple[int, list[str]]:
        """Where the turn's audio starts (a continued turn's start included) and the turns it merges."""
        span = self.book.span(turn_id)
        if span is None or span.start_ms > end_ms:
            return max(0, end_ms - speech_ms), []
        return span.from_ms, list(span.merged)

    def _paused(self, paused: VadSpeechPaused) -> None:
        job = self._jobs.get(paused.turn_id)
        if job is not None:
            if job.ended is not None:
                return  # a late pause of a turn already over
            self._discard(job, "paused_again")
        if not self.options.speculate:
            return
        if 0 <= paused.eot_probability < self.options.speculate_min_eot:
            SPECULATIVE.labels("skipped").inc()
            return
        from_ms, merged = self._span(paused.turn_id, paused.audio_offset_ms, paused.speech_ms)
        self._start(_Job(paused.turn_id, paused.audio_offset_ms, from_ms, paused.speech_ms, merged, True))

    def _ended(self, ended: VadSpeechEnded, received: float) -> None:
        from_ms, merged = self._span(ended.turn_id, ended.audio_offset_ms, ended.speech_ms)
        job = self._jobs.get(ended.turn_id)
        if job is not None and job.ended is None:
            if job.offset_ms == ended.audio_offset_ms and job.from_ms == from_ms:
                SPECULATIVE.labels("hit").inc()
                job.end(ended, received)
                return
            self._discard(job, "offset_changed")
        elif job is not None:
            log.warning("asr.ended_twice", turn_id=ended.turn_id)
            self._discard(job, "ended_twice")
        job = _Job(ended.turn_id, ended.audio_offset_ms, from_ms, ended.speech_ms, merged, False)
        job.end(ended, received)
        self._start(job)

    def _start(self, job: _Job) -> None:
        self._jobs[job.turn_id] = job
        job.task = self.tasks.spawn(self._run(job), key=self.call_id, name=f"asr-{job.turn_id}")
        # only speculations wait for an end that may never come; ended turns are always finished
        waiting = [j for j in self._jobs.values() if j.ended is None]
        for oldest in waiting[: max(0, len(waiting) - _MAX_OPEN_TURNS)]:
            log.warning("asr.open_turns_dropped", turn_id=oldest.turn_id)
            self._discard(oldest, "never_ended")

    def _discard(self, job: _Job, reason: str) -> None:
        """Drop a job's result unseen: no final; its provider usage is published as cancelled."""
        if self._jobs.get(job.turn_id) is job:
            del self._jobs[job.turn_id]
        if job.speculative and job.ended is None:
            SPECULATIVE.labels(f"miss_{reason}").inc()
        log.info("asr.job_discarded", turn_id=job.turn_id, reason=reason, offset_ms=job.offset_ms)
        if job.task is not None:
            job.task.cancel()

    async def _run(self, job: _Job) -> None:
        usage: list[UsageReport] = []
        used = False
        with bind_call(call_id=self.call_id, turn_id=job.turn_id):
            try:
                outcome = await self._recognize(job, usage)
                await job.turn_over.wait()  # a speculative job: until the turn ends at its offset
                used = True
                if self._jobs.get(job.turn_id) is job:  # from here on, nothing restarts it
                    del self._jobs[job.turn_id]
                await self._publish_outcome(job, outcome)
            except asyncio.CancelledError:
                if job.ended is not None:  # a turn's recognition, not a discarded speculation
                    SEGMENTS.labels("cancelled").inc()
                    log.info("asr.turn_cancelled")
                raise
            finally:
                if self._jobs.get(job.turn_id) is job:
                    del self._jobs[job.turn_id]
                for record in usage:
                    if not used and record.outcome == "ok":
                        record = replace(record, outcome="cancelled")
                    await publish_report(self.bus, self.call_id, job.turn_id, record)

    async def _recognize(self, job: _Job, usage: list[UsageReport]) -> Outcome:
        opts = self.options
        end_ms = job.offset_ms + opts.post_roll_ms
        from_ms = max(0, job.from_ms - opts.pre_roll_ms, end_ms - opts.max_segment_ms)
        too_short = job.speech_ms < opts.min_speech_ms and not job.merged
        if not too_short:
            await self.buffer.wait_for(end_ms, opts.tail_wait_ms / 1000)
        pcm = self.buffer.cut(from_ms, end_ms)
        audio_ms = len(pcm) * 1000 // (2 * opts.sample_rate)
        if too_short or audio_ms < opts.min_speech_ms:
            return Outcome(audio_ms, too_short=True)
        if not self.chain:
            return Outcome(audio_ms, failure=Failure("provider_unavailable", self.provider_problem, False))
        log.debug("asr.segment", from_ms=from_ms, to_ms=end_ms, speculative=job.speculative)
        return await run_chain(self.chain, pcm, opts.sample_rate, opts.language, usage)

    async def _publish_outcome(self, job: _Job, outcome: Outcome) -> None:
        ended = job.ended
        assert ended is not None
        self._published[job.turn_id] = None
        while len(self._published) > _MAX_PUBLISHED:
            self._published.popitem(last=False)
        if outcome.too_short:
            SEGMENTS.labels("too_short").inc()
            log.info("asr.segment_too_short", speech_ms=ended.speech_ms, audio_ms=outcome.audio_ms)
            await self._publish_final(job, "", outcome.audio_ms, "")
        elif outcome.failure is not None:
            SEGMENTS.labels("error").inc()
            failure = outcome.failure
            await self._report_error(job.turn_id, failure.kind, failure.detail, failure.retryable)
        else:
            SEGMENTS.labels("text" if outcome.text else "empty").inc()
            await self._publish_final(
                job, outcome.text, outcome.audio_ms, outcome.language, outcome.inference_ms, outcome.provider
            )

    def _cut(self, from_ms: int, to_ms: int) -> bytes:
        return self.buffer.cut(from_ms, to_ms)

    async def _publish_final(
        self,
        job: _Job,
        text: str,
        audio_ms: int,
        language: str,
        inference_ms: float = 0.0,
        provider: str = "",
    ) -> None:
        ended = job.ended
        assert ended is not None
        provider = provider or self.provider_name
        processing_ms = int((time.monotonic() - job.received) * 1000)
        final = AsrFinal(
            call_id=self.call_id,
            turn_id=ended.turn_id,
            text=text,
            language=language or self.options.language.split("-")[0],
            audio_ms=audio_ms,
            speech_end_ts_ms=ended.ts_ms,
            processing_ms=processing_ms,
            provider=provider,
            merged=list(job.merged),
            epoch=self.epoch,
        )
        await self.bus.publish(subjects.asr(self.call_id), final)
        tracing.span("asr.final", self.call_id, final.turn_id, processing_ms, provider=provider)
        metrics.STAGE_LATENCY.labels(SERVICE, "asr").observe(processing_ms)
        load.observe_turn(SERVICE, processing_ms / 1000)
        log.info(
            "asr.final",
            audio_ms=audio_ms,
            processing_ms=processing_ms,
            inference_ms=round(inference_ms),
            empty=not text,
            provider=provider,
            speculative=job.speculative,
            merged=job.merged,
            since_speech_end_ms=now_ms() - ended.ts_ms,
            pii_text=text,
        )

    async def _report_error(self, turn_id: str, kind: str, detail: str, retryable: bool) -> None:
        await publish_stage_error(
            self.bus,
            call_id=self.call_id,
            stage="asr",
            kind=kind,
            detail=detail,
            turn_id=turn_id,
            retryable=retryable,
        )

    async def publish_problem(self, kind: str, detail: str) -> None:
        """A call-level problem (unknown provider, bad robot config): the call goes on without ASR."""
        await self._report_error("", kind, detail, False)
