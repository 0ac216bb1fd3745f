"""Per-call ASR state: a rolling frame buffer, VAD-bounded segments, one recognition task per turn.

Provider-agnostic: the session hands a segment to any ``AsrProvider`` and publishes what it says.
A call has a chain of providers (the robot's ``asr.provider`` then ``asr.fallback``): when one fails
on a segment (any ``ProviderError``, a bad key included, or its own stall timeout) the same buffered
segment goes to the next one. Once a provider has produced a final transcript the chain stops there.
Every attempt (failed and cancelled ones too) is published as ``provider.usage`` with the audio the
provider took, for cost.
Audio and VAD events arrive on separate subscriptions, so when ``vad.speech_ended`` arrives the
last frames of the utterance may still be on their way; the turn task waits for them (briefly).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import structlog

from voiceplatform import metrics, subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.clock import now_ms
from voiceplatform.logging import bind_call
from voiceplatform.providers import AsrProvider, ProviderError, Transcript
from voiceplatform.providers.usage import outcome_of, publish_usage
from voiceplatform.runtime import TaskRegistry
from voiceplatform.wire import (
    FRAME_MS,
    AsrFinal,
    AudioChunk,
    CallEnded,
    StageError,
    VadSpeechEnded,
    VadSpeechStarted,
    frame_bytes,
)
from vp_asr.metrics import FALLBACKS, INFERENCE_MS, REAL_TIME_FACTOR, SEGMENTS, SERVICE

log = structlog.get_logger("vp_asr.session")

# speech-start offsets remembered per call; more than a few open turns means lost speech_ended events
_MAX_OPEN_TURNS = 8


@dataclass(frozen=True, slots=True)
class SessionOptions:
    sample_rate: int
    language: str = "ru-RU"
    pre_roll_ms: int = 200
    tail_wait_ms: int = 150
    buffer_ms: int = 30_000
    min_speech_ms: int = 200


async def recognize(
    provider: AsrProvider,
    pcm: bytes,
    sample_rate: int,
    language: str,
    finals: list[Transcript] | None = None,
    sent: list[int] | None = None,
) -> Transcript:
    """Run one segment through a provider; finals are joined (a streaming provider may give several).

    ``finals``, when given, collects each final as it arrives, so a caller still has them when the
    provider fails after producing some; ``sent`` likewise collects the byte counts of the audio the
    provider took (what it was sent, for usage), a failed or cancelled attempt included.
    """

    async def segment() -> AsyncIterator[bytes]:
        if sent is not None:
            sent.append(len(pcm))
        yield pcm

    heard: list[Transcript] = [] if finals is None else finals
    stream = provider.stream_recognize(segment(), sample_rate, language)
    async with contextlib.aclosing(cast(AsyncGenerator[Transcript, None], stream)) as transcripts:
        async for transcript in transcripts:
            if transcript.is_final:
                heard.append(transcript)
    return joined(heard)


def joined(finals: list[Transcript]) -> Transcript:
    text = " ".join(t.text for t in finals if t.text).strip()
    language = next((t.language for t in reversed(finals) if t.language), "")
    return Transcript(text=text, is_final=True, language=language)


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: str
    detail: str
    retryable: bool


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
        self._frames: dict[int, bytes] = {}
        self._max_seq = -1
        self._oldest_seq = 0  # every buffered seq is >= this
        self._frame_arrived = asyncio.Event()
        self._turn_starts: dict[str, int] = {}
        self._subs: list[Subscription] = []
        self.closed = False
        self._frame_bytes = frame_bytes(options.sample_rate)
        self._buffer_frames = max(1, math.ceil(options.buffer_ms / FRAME_MS))

    @property
    def provider_name(self) -> str:
        return self.chain[0].name if self.chain else "none"

    async def open(self) -> None:
        self._subs = [
            await self.bus.subscribe(subjects.audio_in(self.call_id), self._on_audio),
            await self.bus.subscribe(subjects.vad(self.call_id), self._on_vad),
            await self.bus.subscribe(subjects.lifecycle(self.call_id), self._on_lifecycle),
        ]

    async def close(self) -> None:
        """Stop listening and cancel this call's recognitions. Never call from this session's handlers."""
        if self.closed:
            return
        self.closed = True
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []
        await self.tasks.cancel(self.call_id)
        self._frames.clear()

    # ---- handlers (short: long work goes to a task) -------------------------------------------
    async def _on_audio(self, env: Envelope) -> None:
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
        metrics.FRAMES_IN.labels(SERVICE).inc()
        self._frames[chunk.seq] = chunk.pcm
        if chunk.seq > self._max_seq:
            self._max_seq = chunk.seq
            self._evict_before(self._max_seq - self._buffer_frames + 1)
        # wake every waiter, then arm a fresh event for the next frame
        arrived, self._frame_arrived = self._frame_arrived, asyncio.Event()
        arrived.set()

    def _evict_before(self, oldest_kept: int) -> None:
        """Drop frames older than the rolling window; O(frames evicted) on the per-frame path."""
        if oldest_kept <= self._oldest_seq:
            return
        if oldest_kept - self._oldest_seq > len(self._frames):  # a jump in seq: rebuild once
            self._frames = {seq: pcm for seq, pcm in self._frames.items() if seq >= oldest_kept}
        else:
            for seq in range(self._oldest_seq, oldest_kept):
                self._frames.pop(seq, None)
        self._oldest_seq = oldest_kept

    async def _on_vad(self, env: Envelope) -> None:
        msg = env.message
        if isinstance(msg, VadSpeechStarted):
            self._turn_starts[msg.turn_id] = msg.audio_offset_ms
            while len(self._turn_starts) > _MAX_OPEN_TURNS:
                del self._turn_starts[next(iter(self._turn_starts))]
        elif isinstance(msg, VadSpeechEnded) and not self.closed:
            start_ms = self._turn_starts.pop(msg.turn_id, None)
            self.tasks.spawn(
                self._finish_turn(msg, start_ms, time.monotonic()),
                key=self.call_id,
                name=f"asr-{msg.turn_id}",
            )

    async def _on_lifecycle(self, env: Envelope) -> None:
        if isinstance(env.message, CallEnded) and not self.closed:
            self._on_call_ended(self.call_id)

    # ---- one turn ---------------------------------------------------------------------------
    async def _finish_turn(self, ended: VadSpeechEnded, start_ms: int | None, received: float) -> None:
        with bind_call(call_id=self.call_id, turn_id=ended.turn_id):
            try:
                await self._recognize_turn(ended, start_ms, received)
            except asyncio.CancelledError:
                SEGMENTS.labels("cancelled").inc()
                log.info("asr.turn_cancelled")
                raise

    async def _recognize_turn(self, ended: VadSpeechEnded, start_ms: int | None, received: float) -> None:
        opts = self.options
        end_ms = ended.audio_offset_ms
        if start_ms is None or start_ms > end_ms:
            start_ms = max(0, end_ms - ended.speech_ms)
        too_short = ended.speech_ms < opts.min_speech_ms
        if not too_short:
            await self._wait_for_frames(end_ms)
        pcm = self._cut(max(0, start_ms - opts.pre_roll_ms), end_ms)
        audio_ms = len(pcm) * 1000 // (2 * opts.sample_rate)
        if too_short or audio_ms < opts.min_speech_ms:
            SEGMENTS.labels("too_short").inc()
            log.info("asr.segment_too_short", speech_ms=ended.speech_ms, audio_ms=audio_ms)
            await self._publish_final(ended, "", audio_ms, received, "")
            return
        if not self.chain:
            await self._report_error(ended.turn_id, "provider_unavailable", self.provider_problem, False)
            SEGMENTS.labels("error").inc()
            return
        failures: list[_Failure] = []
        for position, provider in enumerate(self.chain):
            if position:
                FALLBACKS.labels(self.chain[position - 1].name, provider.name).inc()
                log.warning(
                    "asr.fallback",
                    from_provider=self.chain[position - 1].name,
                    to_provider=provider.name,
                    kind=failures[-1].kind,
                )
            finals: list[Transcript] = []
            started = time.monotonic()
            failure = await self._attempt(provider, pcm, finals, ended.turn_id)
            if failure is not None:
                failures.append(failure)
                if not any(t.text for t in finals):
                    continue
                # this provider already heard words of the turn: keep them, do not transcribe it twice
                log.warning("asr.final_kept_after_failure", provider=provider.name, kind=failure.kind)
            transcript = joined(finals)
            inference_ms = (time.monotonic() - started) * 1000
            INFERENCE_MS.labels(provider.name).observe(inference_ms)
            REAL_TIME_FACTOR.labels(provider.name).observe(inference_ms / max(audio_ms, 1))
            SEGMENTS.labels("text" if transcript.text else "empty").inc()
            language = transcript.language or opts.language.split("-")[0]
            await self._publish_final(
                ended, transcript.text, audio_ms, received, language, inference_ms, provider.name
            )
            return
        SEGMENTS.labels("error").inc()
        last = failures[-1]
        detail = "; ".join(f.detail for f in failures)
        # another attempt may help when any provider of the chain failed for a passing reason
        await self._report_error(ended.turn_id, last.kind, detail, any(f.retryable for f in failures))

    async def _attempt(
        self, provider: AsrProvider, pcm: bytes, finals: list[Transcript], turn_id: str
    ) -> _Failure | None:
        """One provider on one segment; finals land in ``finals`` as they arrive. None: it finished.

        Whatever the ending (cancellation included), the audio the provider took is published as its
        ``provider.usage``.
        """
        opts = self.options
        sent: list[int] = []
        ending: BaseException | None = None
        try:
            await recognize(provider, pcm, opts.sample_rate, opts.language, finals, sent)
        except ProviderError as exc:
            ending = exc
            metrics.PROVIDER_ERRORS.labels(SERVICE, provider.name, exc.kind).inc()
            log.warning("asr.provider_failed", provider=provider.name, kind=exc.kind, retryable=exc.retryable)
            return _Failure(exc.kind, str(exc), exc.retryable)
        except Exception as exc:
            ending = exc
            # a provider bug must not silence the robot either: the next provider gets the segment
            metrics.PROVIDER_ERRORS.labels(SERVICE, provider.name, "internal").inc()
            log.exception("asr.provider_crashed", provider=provider.name)
            return _Failure("internal", f"{provider.name}: {type(exc).__name__}", False)
        except BaseException as exc:  # cancelled (barge-in, call end, drain): counted, then re-raised
            ending = exc
            raise
        finally:
            await publish_usage(
                self.bus,
                self.call_id,
                stage="asr",
                provider=provider.name,
                turn_id=turn_id,
                audio_ms=sum(sent) * 1000 // (2 * opts.sample_rate),
                outcome=outcome_of(ending),
            )
        return None

    async def _wait_for_frames(self, end_ms: int) -> None:
        """Until a frame at or past ``end_ms`` is buffered, or ``tail_wait_ms`` has passed."""
        deadline = time.monotonic() + self.options.tail_wait_ms / 1000
        while self._max_seq * FRAME_MS < end_ms:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.debug("asr.tail_wait_expired", end_ms=end_ms, last_offset_ms=self._max_seq * FRAME_MS)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._frame_arrived.wait(), remaining)

    def _cut(self, from_ms: int, to_ms: int) -> bytes:
        """PCM of [from_ms, to_ms) from the buffer; frames lost inside the span become silence."""
        if not self._frames:
            return b""
        first = max(from_ms // FRAME_MS, min(self._frames))
        last = min(math.ceil(to_ms / FRAME_MS) - 1, self._max_seq)
        silence = bytes(self._frame_bytes)
        return b"".join(self._frames.get(seq, silence) for seq in range(first, last + 1))

    async def _publish_final(
        self,
        ended: VadSpeechEnded,
        text: str,
        audio_ms: int,
        received: float,
        language: str,
        inference_ms: float = 0.0,
        provider: str = "",
    ) -> None:
        provider = provider or self.provider_name
        processing_ms = int((time.monotonic() - received) * 1000)
        final = AsrFinal(
            call_id=self.call_id,
            turn_id=ended.turn_id,
            text=text,
            language=language or self.options.language.split("-")[0],
            audio_ms=audio_ms,
            speech_end_ts_ms=ended.ts_ms,
            processing_ms=processing_ms,
            provider=provider,
        )
        await self.bus.publish(subjects.asr(self.call_id), final)
        metrics.STAGE_LATENCY.labels(SERVICE, "asr").observe(processing_ms)
        log.info(
            "asr.final",
            audio_ms=audio_ms,
            processing_ms=processing_ms,
            inference_ms=round(inference_ms),
            empty=not text,
            provider=provider,
            since_speech_end_ms=now_ms() - ended.ts_ms,
            pii_text=text,
        )

    async def _report_error(self, turn_id: str, kind: str, detail: str, retryable: bool) -> None:
        await self.bus.publish(
            subjects.lifecycle(self.call_id),
            StageError(
                call_id=self.call_id,
                stage="asr",
                kind=kind,
                detail=detail[:500],
                turn_id=turn_id,
                retryable=retryable,
            ),
        )

    async def publish_problem(self, kind: str, detail: str) -> None:
        """A call-level problem (unknown provider, bad robot config): the call goes on without ASR."""
        await self._report_error("", kind, detail, False)
