"""One call in realtime mode: the caller's audio to a speech-to-speech session, its events back out.

The session publishes exactly what the pipeline's stages publish (``vad.*`` from the provider's
server VAD, ``asr.final`` from its input transcription, ``llm.sentence``/``tts.audio``/``llm.done``
from its reply), so the gateway plays, interrupts and measures a realtime call like any other and
the recorder records it the same way. ``asr.final`` carries ``route=False`` and ``llm.sentence``
``synthesize=False``: the prompt-router and TTS leave them alone.

Barge-in: the gateway decides (as for the pipeline) and publishes ``control.interrupt`` with what
the caller heard; the session cancels the reply and truncates the assistant item to that many
milliseconds, so the model's memory of the conversation holds only what was really said.

A dropped or expired provider session (Yandex sessions last 5 minutes) is reopened with the
conversation so far; after ``max_reconnects`` failures in a row the call is ended politely.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import structlog

from voiceplatform import metrics, subjects, tracing
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.clock import now_ms
from voiceplatform.config import RobotConfig
from voiceplatform.logging import bind_call
from voiceplatform.outbound.template import fill
from voiceplatform.providers import ProviderError
from voiceplatform.providers.realtime import (
    AudioDelta,
    InputTranscript,
    ProviderNotice,
    RealtimeConnection,
    RealtimeEvent,
    RealtimeProvider,
    RealtimeSessionConfig,
    ResponseDone,
    ResponseItem,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
)
from voiceplatform.providers.usage import publish_usage
from voiceplatform.resampling import StreamResampler
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import (
    AsrFinal,
    AudioChunk,
    CallEnded,
    ControlHangup,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    Message,
    TtsAudio,
    VadSpeechEnded,
    VadSpeechStarted,
    frame_bytes,
)

from .metrics import BARGE_INS, NOTICES, RECONNECTS, SERVICE
from .reply import RealtimeReply

log = structlog.get_logger("vp_realtime.session")

OnCallEnded = Callable[[str], Awaitable[None]]
INPUT_RATE = 24000  # the only input rate both vendors document
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
# a session that lived this long was healthy: its loss starts a fresh count of reconnects
HEALTHY_SESSION_S = 20.0
GREETING_INSTRUCTIONS = "Поприветствуй собеседника, сказав дословно: «{text}»"


class RealtimeCallSession:
    def __init__(
        self,
        bus: Bus,
        call_id: str,
        sample_rate: int,
        robot: RobotConfig,
        provider: RealtimeProvider,
        on_call_ended: OnCallEnded,
        variables: Mapping[str, str] | None = None,
    ) -> None:
        self.bus = bus
        self.call_id = call_id
        self.sample_rate = sample_rate
        self.robot = robot
        self.provider = provider
        self.provider_label = f"realtime-{provider.name}"
        self.cfg = robot.settings.realtime
        # per-call variables (outbound calls): {name} in the prompt and the greeting, as in pipeline
        # mode (the prompt-router and the gateway fill them there)
        self.variables = dict(variables or {})
        self._on_call_ended = on_call_ended
        self._subs: list[Subscription] = []
        self._conn: RealtimeConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._in_resampler = StreamResampler(sample_rate, INPUT_RATE)
        self._turns = 0
        # input item → (turn, audio start ms, audio end ms, wall clock of the end)
        self._inputs: OrderedDict[str, tuple[str, int, int, int]] = OrderedDict()
        self._awaiting_reply: deque[str] = deque()  # user turns whose reply has not started
        self._replies: OrderedDict[str, RealtimeReply] = OrderedDict()  # by response id, recent ones
        self._history: list[tuple[Literal["user", "assistant"], str, str]] = []  # role, text, turn
        self._greeting_turn = f"{call_id}-greeting"
        self._greeting_pending = robot.greeting_wav is None and bool(robot.settings.greeting_text)
        self.last_activity = time.monotonic()
        self.closed = False
        self.dropped_frames = 0
        self._unbilled_audio_bytes = 0  # caller audio streamed since the last usage report (call rate)
        self._frames_in = metrics.FRAMES_IN.labels(SERVICE)  # bound once: the audio path runs 50×/s

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        for subject, handler in (
            (subjects.lifecycle(self.call_id), self._on_lifecycle),
            (subjects.control(self.call_id), self._on_control),
            (subjects.audio_in(self.call_id), self._on_audio),
        ):
            self._subs.append(await self.bus.subscribe(subject, handler))
        self._runner = asyncio.create_task(self._run(), name=f"realtime-{self.call_id}")

    @property
    def connected(self) -> bool:
        """The provider session is open: caller audio reaches it (before, frames are dropped)."""
        return self._conn is not None

    @property
    def replying(self) -> bool:
        return any(not r.done for r in self._replies.values())

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
        with bind_call(call_id=self.call_id):
            log.info("realtime.session_closed", reason=reason, turns=self._turns, dropped=self.dropped_frames)

    def _session_config(self) -> RealtimeSessionConfig:
        return RealtimeSessionConfig(
            instructions=fill(self.robot.system_prompt, self.variables),
            voice=self.cfg.voice,
            input_rate=INPUT_RATE,
            output_rate=self.cfg.output_sample_rate,
            vad_threshold=self.cfg.vad_threshold,
            silence_duration_ms=self.cfg.silence_duration_ms,
            prefix_padding_ms=self.cfg.prefix_padding_ms,
            history=tuple((role, text) for role, text, _ in self._history if text),
        )

    async def _run(self) -> None:
        failures = 0
        with bind_call(call_id=self.call_id):
            while not self.closed:
                opened_at = time.monotonic()
                try:
                    conn = await self.provider.connect(self._session_config())
                except ProviderError as exc:
                    failures += 1
                    if not await self._lost(exc, failures, retry=exc.retryable):
                        return
                    continue
                self._conn = conn
                log.info("realtime.connected", provider=self.provider.name, history=len(self._history))
                try:
                    if self._greeting_pending:
                        self._greeting_pending = False
                        self._awaiting_reply.appendleft(self._greeting_turn)
                        text = fill(self.robot.settings.greeting_text, self.variables)
                        await conn.create_response(GREETING_INSTRUCTIONS.format(text=text))
                    async for event in conn.events():
                        await self._handle(event)
                    return  # iteration ends only when we closed the connection
                except ProviderError as exc:
                    self._conn = None
                    await conn.aclose()
                    await self._abandon_replies()
                    failures = 1 if time.monotonic() - opened_at > HEALTHY_SESSION_S else failures + 1
                    if not await self._lost(exc, failures, retry=True):
                        return

    async def _lost(self, exc: ProviderError, failures: int, *, retry: bool) -> bool:
        """Report a lost or refused session; True when another attempt should follow."""
        await self._stage_error(exc)
        if not retry or failures > self.cfg.max_reconnects:
            log.error("realtime.gave_up", provider=self.provider.name, failures=failures, error=str(exc))
            await self.bus.publish(
                subjects.control(self.call_id),
                ControlHangup(call_id=self.call_id, reason="realtime_unavailable", graceful=True),
            )
            return False
        RECONNECTS.labels(self.provider.name).inc()
        delay = RECONNECT_BACKOFF_S[min(failures - 1, len(RECONNECT_BACKOFF_S) - 1)]
        log.warning("realtime.reconnecting", provider=self.provider.name, failures=failures, delay_s=delay)
        await asyncio.sleep(delay)
        return not self.closed

    async def _stage_error(self, exc: ProviderError, turn_id: str = "") -> None:
        metrics.PROVIDER_ERRORS.labels(SERVICE, self.provider.name, exc.kind).inc()
        await publish_stage_error(
            self.bus,
            call_id=self.call_id,
            stage="realtime",
            kind=exc.kind,
            detail=str(exc),
            turn_id=turn_id,
            retryable=exc.retryable,
        )

    async def _abandon_replies(self) -> None:
        """The session died mid-reply: close those turns so the gateway and recorder see an end."""
        for reply in list(self._replies.values()):
            if not reply.done:
                reply.interrupted = True
                await self._publish_all(reply.finish("failed", 0, 0))
                await self._report_usage(reply.turn_id, 0, 0, "failed")

    async def _report_usage(
        self,
        turn_id: str,
        input_tokens: int,
        output_tokens: int,
        outcome: Literal["ok", "cancelled", "failed"],
    ) -> None:
        """Tokens of one reply, plus the caller audio streamed since the last report (billed too)."""
        audio_ms = self._unbilled_audio_bytes * 1000 // (2 * self.sample_rate)
        self._unbilled_audio_bytes = 0
        await publish_usage(
            self.bus,
            self.call_id,
            stage="realtime",
            provider=self.provider.name,
            turn_id=turn_id,
            model=self.cfg.model,
            audio_ms=audio_ms,
            prompt_tokens=input_tokens,
            completion_tokens=output_tokens,
            outcome=outcome,
        )

    # ---- provider events ----------------------------------------------------------------------------
    async def _handle(self, event: RealtimeEvent) -> None:
        self.last_activity = time.monotonic()
        match event:
            case AudioDelta():
                reply = self._replies.get(event.response_id) or self._latest_reply()
                if reply is None or reply.interrupted or reply.done:
                    metrics.MESSAGES_DROPPED.labels(SERVICE, "realtime.audio", "stale_reply").inc()
                    return
                first = not reply.has_audio
                await self._publish_all(reply.audio(event.pcm))
                if first:
                    asked = reply.speech_end_ts_ms or reply.started_ts_ms
                    tracing.span(
                        "realtime.first_audio",
                        self.call_id,
                        reply.turn_id,
                        now_ms() - asked,
                        robot=self.robot.name,
                        provider=self.provider_label,
                    )
            case TranscriptDelta():
                reply = self._replies.get(event.response_id) or self._latest_reply()
                if reply is not None and not reply.done:
                    await self._publish_all(reply.transcript(event.text))
            case SpeechStarted():
                await self._speech_started(event)
            case SpeechStopped():
                await self._speech_stopped(event)
            case InputTranscript():
                await self._input_transcript(event)
            case ResponseStarted():
                self._reply_started(event.response_id)
            case ResponseItem():
                reply = self._replies.get(event.response_id) or self._latest_reply()
                if reply is not None and not reply.item_id:
                    reply.item_id = event.item_id
            case ResponseDone():
                await self._reply_done(event)
            case ProviderNotice():
                NOTICES.labels(self.provider.name, event.code[:40]).inc()
                log.warning("realtime.provider_notice", code=event.code, message=event.message)

    def _latest_reply(self) -> RealtimeReply | None:
        return next(reversed(self._replies.values()), None)

    async def _speech_started(self, event: SpeechStarted) -> None:
        self._turns += 1
        turn_id = f"{self.call_id}-rt{self._turns}-{secrets.token_hex(2)}"
        self._inputs[event.item_id or turn_id] = (turn_id, event.audio_start_ms, 0, 0)
        while len(self._inputs) > 32:
            self._inputs.popitem(last=False)
        with bind_call(call_id=self.call_id, turn_id=turn_id):
            log.info("realtime.speech_started", audio_offset_ms=event.audio_start_ms)
        await self._publish(
            subjects.vad(self.call_id),
            VadSpeechStarted(call_id=self.call_id, turn_id=turn_id, audio_offset_ms=event.audio_start_ms),
        )

    async def _speech_stopped(self, event: SpeechStopped) -> None:
        found = self._inputs.get(event.item_id) or next(reversed(self._inputs.values()), None)
        if found is None:
            return
        turn_id, start_ms, _, _ = found
        self._inputs[event.item_id or turn_id] = (turn_id, start_ms, event.audio_end_ms, now_ms())
        self._awaiting_reply.append(turn_id)
        await self._publish(
            subjects.vad(self.call_id),
            VadSpeechEnded(
                call_id=self.call_id,
                turn_id=turn_id,
                audio_offset_ms=event.audio_end_ms,
                speech_ms=max(0, event.audio_end_ms - start_ms),
            ),
        )

    async def _input_transcript(self, event: InputTranscript) -> None:
        found = self._inputs.get(event.item_id)
        if found is None:
            return  # an item we never saw start (history seeding, a previous session)
        turn_id, start_ms, end_ms, ended_ts = found
        if event.failed:
            log.warning("realtime.transcription_failed", turn_id=turn_id)
        if event.text.strip():
            self._history.append(("user", event.text.strip(), turn_id))
        await self._publish(
            subjects.asr(self.call_id),
            AsrFinal(
                call_id=self.call_id,
                turn_id=turn_id,
                text=event.text.strip(),
                audio_ms=max(0, end_ms - start_ms),
                speech_end_ts_ms=ended_ts,
                processing_ms=max(0, now_ms() - ended_ts) if ended_ts else 0,
                provider=self.provider_label,
                route=False,
            ),
        )

    def _reply_started(self, response_id: str) -> None:
        turn_id = self._awaiting_reply.popleft() if self._awaiting_reply else ""
        if not turn_id:
            self._turns += 1
            turn_id = f"{self.call_id}-rt{self._turns}-bot"  # a reply nobody asked for (tools, idle)
        self._replies[response_id] = RealtimeReply(
            call_id=self.call_id,
            turn_id=turn_id,
            response_id=response_id,
            robot=self.robot.name,
            sample_rate=self.sample_rate,
            provider_rate=self.cfg.output_sample_rate,
            provider=self.provider_label,
            greeting=turn_id == self._greeting_turn,
            started_ts_ms=now_ms(),
            speech_end_ts_ms=next((v[3] for v in self._inputs.values() if v[0] == turn_id), 0),
        )
        while len(self._replies) > 8:
            self._replies.popitem(last=False)

    async def _reply_done(self, event: ResponseDone) -> None:
        reply = self._replies.get(event.response_id)
        if reply is None or reply.done:
            return
        await self._publish_all(reply.finish(event.status, event.input_tokens, event.output_tokens))
        outcome: Literal["ok", "cancelled", "failed"] = (
            "ok" if event.status == "completed" else "cancelled" if event.status == "cancelled" else "failed"
        )
        await self._report_usage(reply.turn_id, event.input_tokens, event.output_tokens, outcome)
        tracing.span(
            "realtime.reply",
            self.call_id,
            reply.turn_id,
            now_ms() - reply.started_ts_ms,
            robot=self.robot.name,
            provider=self.provider_label,
            status=event.status,
            audio_ms=reply.audio_ms,
        )
        if reply.text.strip() and not reply.interrupted:
            self._history.append(("assistant", reply.text.strip(), reply.turn_id))
        with bind_call(call_id=self.call_id, turn_id=reply.turn_id):
            log.info(
                "realtime.reply_done",
                status=event.status,
                audio_ms=reply.audio_ms,
                sentences=len(reply.sentences),
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
            )

    # ---- bus handlers --------------------------------------------------------------------------------
    async def _on_audio(self, env: Envelope) -> Message | None:
        chunk = env.message
        if not isinstance(chunk, AudioChunk):
            return None
        problem = chunk.problem(self.sample_rate)
        conn = self._conn
        if problem is None and conn is None:
            problem = "not_connected"  # connecting or reconnecting: the provider cannot hear it
        if problem is not None:
            self.dropped_frames += 1
            metrics.MESSAGES_DROPPED.labels(SERVICE, "audio.in", problem).inc()
            return None
        self._frames_in.inc(len(chunk.pcm) // frame_bytes(self.sample_rate))  # v2: several frames
        self.last_activity = time.monotonic()
        self._unbilled_audio_bytes += len(chunk.pcm)
        assert conn is not None
        with contextlib.suppress(ProviderError):  # a dead socket is noticed and reopened by _run
            await conn.append_audio(self._in_resampler.feed(chunk.pcm))
        return None

    async def _on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlInterrupt):
            await self._interrupt(msg)
        return None

    async def _interrupt(self, msg: ControlInterrupt) -> None:
        reply = next((r for r in self._replies.values() if r.turn_id == msg.turn_id), None)
        if reply is None or reply.barged_in:
            return
        # the server may have cancelled the reply already (interrupt_response): it still needs the truncation
        reply.barged_in = reply.interrupted = True
        conn = self._conn
        heard_ms = min(msg.played_ms, reply.audio_ms)
        with bind_call(call_id=self.call_id, turn_id=reply.turn_id):
            log.info("realtime.interrupted", heard_ms=heard_ms, reply_done=reply.done)
        BARGE_INS.labels(self.provider.name).inc()
        if msg.played_text:
            self._history.append(("assistant", msg.played_text, reply.turn_id))
        if conn is None:
            return
        with contextlib.suppress(ProviderError):
            if not reply.done:
                # with interrupt_response the server may have cancelled already: an error is harmless
                await conn.cancel_response()
            if reply.item_id:
                await conn.truncate(reply.item_id, heard_ms)

    async def _on_lifecycle(self, env: Envelope) -> Message | None:
        if isinstance(env.message, CallEnded):
            await self._on_call_ended(self.call_id)
        return None

    async def _publish(self, subject: str, msg: Message) -> None:
        await self.bus.publish(subject, msg)

    async def _publish_all(self, messages: list[Message]) -> None:
        for msg in messages:
            await self.bus.publish(_subject_of(self.call_id, msg), msg)


def _subject_of(call_id: str, msg: Message) -> str:
    if isinstance(msg, TtsAudio):
        return subjects.tts_audio(call_id)
    if isinstance(msg, LlmSentence):
        return subjects.llm_sentence(call_id)
    if isinstance(msg, LlmDone):
        return subjects.llm_done(call_id)
    raise TypeError(f"no subject for {msg.type_name}")
