"""One call as a gateway sees it. Transport-agnostic: gateways adapt their socket to ``AudioSink``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

import structlog
from prometheus_client import Counter, Histogram

from voiceplatform import load, metrics, subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.clock import now_ms
from voiceplatform.config import RobotConfig
from voiceplatform.gateway.call_owners import CallOwners
from voiceplatform.gateway.digits import DigitTurns
from voiceplatform.gateway.failover import OwnerEpochs
from voiceplatform.gateway.fallback_line import FallbackLine
from voiceplatform.gateway.frame_outbox import FrameOutbox
from voiceplatform.gateway.greeting import greeting_pcm
from voiceplatform.gateway.handover import call_summary
from voiceplatform.gateway.heard import PlaybackClock
from voiceplatform.gateway.owners import GatewayDirectory, owned_roles_for
from voiceplatform.gateway.playout import Playout
from voiceplatform.gateway.recording import (
    RecordingSink,
    close_recording,
    open_recording,
    recording_event,
)
from voiceplatform.gateway.turn_keeper import TurnKeeper
from voiceplatform.gateway.turn_policy import Cut
from voiceplatform.gateway.turns import Turn, TurnKind, TurnState, TurnTable
from voiceplatform.logging import bind_call
from voiceplatform.outbound.template import fill
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.runtime.tasks import TaskRegistry
from voiceplatform.wire import (
    AsrFinal,
    AssignRequest,
    AudioChunk,
    CallDtmf,
    CallEnded,
    CallStarted,
    ControlHangup,
    ControlRecord,
    ControlTransfer,
    LlmDone,
    LlmSentence,
    Message,
    PlaybackStarted,
    PromptSwitched,
    StageError,
    TtsAudio,
    VadSpeechEnded,
    VadSpeechPaused,
    VadSpeechResumed,
    VadSpeechStarted,
    frame_bytes,
)

log = structlog.get_logger("voiceplatform.gateway")

STALE_AUDIO = Counter(
    "vp_gateway_stale_audio_dropped_total", "TTS chunks of interrupted/unknown turns dropped"
)
COPIED_AUDIO = Counter(
    "vp_gateway_copied_audio_dropped_total", "TTS chunks dropped as copies (a retried sentence)"
)
GREETING_LATENCY = Histogram(
    "vp_gateway_greeting_first_audio_ms",
    "Call start → first greeting frame sent",
    buckets=metrics.LATENCY_BUCKETS_MS,
)
VOICE_TO_VOICE = Histogram(
    "vp_gateway_voice_to_voice_ms", "Speech end → first bot frame sent", buckets=metrics.LATENCY_BUCKETS_MS
)

FRAME_S = 0.02
MAX_ERROR_DETAIL = 300  # characters of a stage error's detail sent to the client


class AudioSink(Protocol):
    """The caller's side of a transport."""

    async def send_audio(self, pcm: bytes) -> None: ...
    async def send_event(self, event: dict[str, Any]) -> None: ...
    async def flush(self, turn_id: str) -> None: ...
    async def close(self, reason: str) -> None: ...


def new_call_id(channel: str) -> str:
    return f"{channel}-{uuid.uuid4().hex[:12]}"


class CallSession:
    def __init__(
        self,
        bus: Bus,
        robot: RobotConfig,
        *,
        channel: str,
        sample_rate: int,
        sink: AudioSink,
        directory: GatewayDirectory | None = None,
        call_id: str | None = None,
        caller: str = "",
        gateway_id: str = "",
        lead_frames: int = 3,
        greeting_audio: bytes | None = None,
        sink_ahead_ms: int = 0,
        variables: dict[str, str] | None = None,
        hold_greeting: bool = False,
        clock: PlaybackClock | None = None,
        outbox: FrameOutbox | None = None,
        frames_per_message: int = 1,
        recordings_dir: Path | None = None,
    ) -> None:
        self.bus = bus
        self.robot = robot
        self.channel = channel
        self.sample_rate = sample_rate
        self.directory = directory
        self.call_id = subjects.check_token(call_id or new_call_id(channel))
        # caller frames: published a few ms at a time with the process's other calls (frame_outbox.py),
        # or each at once without an outbox
        self.outbox = outbox
        self._audio_subject = subjects.audio_in(self.call_id)
        # frames per audio.chunk (v2 above 1): fewer messages, each frame up to (n-1) x 20 ms later
        self.frames_per_message = max(1, frames_per_message)
        self._unsent: list[bytes] = []
        # the call's stereo WAV (gateway/recording.py): None without a recordings dir or when the
        # robot turned it off; the sink wrapper places the robot audio as it is played
        self.recording = open_recording(recordings_dir, robot, self.call_id, sample_rate)
        self.sink: AudioSink = sink if self.recording is None else RecordingSink(sink, self.recording)
        self.caller = caller
        self.gateway_id = gateway_id
        self.lead_frames = lead_frames
        # audio the sink holds beyond the lead frames (FreeSWITCH segments): replayed after a pause
        self.sink_ahead_ms = sink_ahead_ms
        # greeting PCM at the call's rate kept by the gateway (synthesized once), else greeting.wav
        self.greeting_audio = greeting_audio
        # per-call variables (outbound calls): {name} in greeting_text; sent on call.started
        self.variables = dict(variables or {})
        # an outbound call's greeting waits for answering-machine detection: start_greeting()
        self.hold_greeting = hold_greeting
        # ...and until it starts, the far end's words get no reply (a machine's greeting, a hello)
        self.replies_held = hold_greeting
        self.streaming = CallOwners(
            bus,
            AssignRequest(
                call_id=self.call_id, role="", robot=robot.name, sample_rate=sample_rate, channel=channel
            ),
            directory=directory,
            spawn=self._spawn,
            ended=lambda: self.ended,
            next_seq=lambda: self._seq,
            on_refused=lambda role, why: self._publish_error(role, "unassigned", why),
        )
        # the phone path: what the caller heard comes from the media server (heard.py)
        self.playout = Playout(frame_bytes(sample_rate), clock)
        self._audio_ready = asyncio.Event()
        self.keeper = TurnKeeper(
            call_id=self.call_id,
            bus=bus,
            sink=self.sink,
            playout=self.playout,
            settings=robot.settings,
            sample_rate=sample_rate,
            ahead_ms=lead_frames * 20 + sink_ahead_ms,
            spawn=self._spawn,
            wake=self._audio_ready.set,
            fallback_line=FallbackLine(robot, sample_rate),
        )
        self.digits = DigitTurns(
            call_id=self.call_id,
            bus=bus,
            keeper=self.keeper,
            cfg=robot.settings.dtmf,
            realtime=robot.settings.mode == "realtime",
        )
        self.greeting_turn = f"{self.call_id}-greeting"
        self.ended = False
        self.end_reason = ""
        self.transferred_to = ""  # set by a gateway that handed the caller over (end reason "transferred")
        self._seq = 0
        self._subs: list[Subscription] = []
        self._tasks = TaskRegistry()
        self._started_mono = time.monotonic()
        self._started_ms = now_ms()
        self.closed = asyncio.Event()

    @property
    def owners(self) -> dict[str, str]:
        return self.streaming.owners

    @property
    def epochs(self) -> OwnerEpochs:
        return self.streaming.epochs

    @property
    def turns(self) -> TurnTable:
        return self.keeper.turns

    @property
    def turns_completed(self) -> int:
        return self.keeper.turns_completed

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        with bind_call(call_id=self.call_id):
            subscriptions = [
                (subjects.vad(self.call_id), self._on_vad),
                (subjects.asr(self.call_id), self._on_asr),
                (subjects.llm_sentence(self.call_id), self._on_sentence),
                (subjects.llm_done(self.call_id), self._on_llm_done),
                (subjects.tts_audio(self.call_id), self._on_tts_audio),
                (subjects.control(self.call_id), self._on_control),
                (subjects.lifecycle(self.call_id), self._on_lifecycle),
            ]
            for subject, handler in subscriptions:
                self._subs.append(await self.bus.subscribe(subject, handler))
            if self.directory is not None:
                self.directory.register(self.streaming)
            await self.bus.publish(
                subjects.lifecycle(self.call_id),
                CallStarted(
                    call_id=self.call_id,
                    robot=self.robot.name,
                    channel="phone" if self.channel == "phone" else "web",
                    sample_rate=self.sample_rate,
                    caller=self.caller,
                    mode=self.robot.settings.mode,
                    gateway_id=self.gateway_id,
                    variables=self.variables,
                ),
            )
            log.info("call.started", robot=self.robot.name, channel=self.channel, rate=self.sample_rate)
            # the client hears of its call before anything of the call (the greeting's words)
            await self.sink.send_event(
                {
                    "type": "call.started",
                    "call_id": self.call_id,
                    "sample_rate": self.sample_rate,
                    "robot": self.robot.name,
                    "prompt": self.robot.settings.router.default_prompt,
                }
            )
            if self.recording is not None:
                await self.bus.publish(
                    subjects.lifecycle(self.call_id), recording_event(self.call_id, self.recording)
                )
            if not self.hold_greeting:
                await self._start_greeting()
            self._spawn(self._playout_loop(), "playout")
            for role in owned_roles_for(self.robot.settings.mode):
                self.request_reassign(role, "call_start")
            self._spawn(self._max_duration(), "max-duration")
            if self.robot.settings.turns.no_input_s > 0 and self.robot.settings.mode != "realtime":
                self._spawn(self.keeper.watch_silence(lambda: self.ended), "no-input")
            if self.robot.settings.deadlines.enabled and self.robot.settings.mode != "realtime":
                self._spawn(self.keeper.watch_deadlines(lambda: self.ended), "deadlines")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.spawn(coro, key=name, name=f"{self.call_id}-{name}")

    async def end(self, reason: str) -> None:
        """End the call once: publish call.ended, stop everything, close the transport."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        with bind_call(call_id=self.call_id):
            with contextlib.suppress(Exception):
                await self._send_frames()  # the caller's last frames, held for a fuller chunk
            for turn in self.turns.live():
                if turn.expects_reply or turn.state is TurnState.SPEAKING or turn.kind is not TurnKind.CALLER:
                    await self.keeper.cut(Cut(turn.turn_id, "call_ended"))
            duration = int((time.monotonic() - self._started_mono) * 1000)
            with contextlib.suppress(Exception):
                await self.bus.publish(
                    subjects.lifecycle(self.call_id),
                    CallEnded(
                        call_id=self.call_id,
                        reason=reason,
                        duration_ms=duration,
                        turns=self.turns_completed,
                        transfer_to=self.transferred_to,
                    ),
                )
            log.info("call.ended", reason=reason, duration_ms=duration, turns=self.turns_completed)
            if self.recording is not None and close_recording(self.call_id, self.recording):
                with contextlib.suppress(Exception):
                    await self.bus.publish(
                        subjects.lifecycle(self.call_id), recording_event(self.call_id, self.recording)
                    )
            if self.directory is not None:
                self.directory.unregister(self.call_id)
            for sub in self._subs:
                await sub.unsubscribe()
            self._subs.clear()
            current = asyncio.current_task()
            for task in self._tasks.all_tasks():
                if task is not current:
                    task.cancel()
            with contextlib.suppress(Exception):
                await self.sink.send_event({"type": "call.ended", "reason": reason})
                await self.sink.close(reason)
            self.closed.set()

    async def _max_duration(self) -> None:
        await asyncio.sleep(self.robot.settings.max_call_s)
        await self.end("max_duration")

    # ---- caller audio -----------------------------------------------------------------------
    async def push_audio(self, frame: bytes) -> None:
        """One 20 ms frame of caller audio at the call's rate."""
        if self.ended:
            return
        if self.recording is not None:
            self.recording.caller(frame)
        self.streaming.audio_log.keep(self._seq, frame)  # replayed to a new vad/asr owner
        self._seq += 1
        self._unsent.append(frame)
        if len(self._unsent) >= self.frames_per_message:
            await self._send_frames()

    async def _send_frames(self) -> None:
        """Publish the frames not sent yet as one ``audio.chunk`` (v2 when it holds several)."""
        frames, self._unsent = self._unsent, []
        if not frames:
            return
        chunk = AudioChunk(
            call_id=self.call_id,
            seq=self._seq - len(frames),
            sample_rate=self.sample_rate,
            pcm=frames[0] if len(frames) == 1 else b"".join(frames),
            v=1 if len(frames) == 1 else 2,
        )
        if self.outbox is not None:
            self.outbox.put(self._audio_subject, chunk)
        else:
            await self.bus.publish(self._audio_subject, chunk)

    # ---- ownership ----------------------------------------------------------------------------
    def request_reassign(self, role: str, reason: str) -> None:
        self.streaming.request_reassign(role, reason)

    async def _publish_error(self, stage: str, kind: str, detail: str, turn_id: str = "") -> None:
        await publish_stage_error(
            self.bus, call_id=self.call_id, stage=stage, kind=kind, detail=detail, turn_id=turn_id
        )

    # ---- robot-initiated turns: the greeting and re-prompts ------------------------------------------
    async def start_greeting(self, text: str | None = None) -> None:
        """The held greeting now (``hold_greeting``), or ``text`` said in its place (synthesized)."""
        if text is None:
            self.replies_held = False  # a human: the dialogue may begin
        if not self.ended and self.turns.get(self.greeting_turn) is None:
            await self._start_greeting(text)

    async def _start_greeting(self, say: str | None = None) -> None:
        text = fill(self.robot.settings.greeting_text, self.variables) if say is None else say
        pcm = None
        if say is None:
            pcm = self.greeting_audio
            if pcm is None:
                pcm = greeting_pcm(self.robot, self.sample_rate)
        if pcm is None and not text:
            return
        turn = self.turns.add(
            Turn(self.greeting_turn, TurnKind.GREETING, TurnState.THINKING, expects_reply=True)
        )
        turn.sentences[0] = text
        self.playout.turn(self.greeting_turn)
        self.playout.set_expected(self.greeting_turn, 1)
        if pcm is not None:
            self.playout.add_audio(self.greeting_turn, 0, pcm, last=True, text=text)
            self._audio_ready.set()
            if text:  # a recorded greeting: the client is told its words (a synthesized one's come
                # with its llm.sentence, as any reply's)
                await self.sink.send_event(
                    {"type": "bot.sentence", "turn_id": self.greeting_turn, "index": 0, "text": text}
                )
        elif self.robot.settings.mode != "realtime":
            # no recorded greeting: synthesize it through the normal TTS path (a realtime session
            # has its model say it, into this same turn)
            await self.bus.publish(
                subjects.llm_sentence(self.call_id),
                LlmSentence(
                    call_id=self.call_id,
                    turn_id=self.greeting_turn,
                    index=0,
                    text=text,
                    robot=self.robot.name,
                    sample_rate=self.sample_rate,
                    last=True,
                ),
            )

    # ---- playout -----------------------------------------------------------------------------------
    def _may_play_front(self) -> bool:
        front = self.playout.current
        if front is None:
            return True
        turn = self.turns.get(front.turn_id)
        return turn is None or turn.may_play(now_ms())

    async def _playout_loop(self) -> None:
        """Send robot frames paced at real time, at most ``lead_frames`` ahead of the clock.

        The schedule survives an underrun (a streaming voice delivers a sentence in chunks): after
        one the loop may catch up to the lead again, never further, so what was sent stays close to
        what was heard. A new turn, or a paused or held one, starts a fresh schedule.
        """
        next_t: float | None = None
        playing: str | None = None
        lead_s = self.lead_frames * FRAME_S
        loop = asyncio.get_running_loop()
        with bind_call(call_id=self.call_id):
            while not self.ended:
                item: tuple[str, bytes] | None = None
                if self._may_play_front():
                    item = self.playout.next_frame()
                else:
                    playing, next_t = None, None  # the caller's side was flushed, or got nothing yet
                await self._complete_finished()
                if item is None:
                    # nothing to play: wait for audio, or look again in 50 ms (a held turn may play by
                    # then); a timer handle, not wait_for's task: this runs 20 times a second per call
                    self._audio_ready.clear()
                    wake = loop.call_later(0.05, self._audio_ready.set)
                    try:
                        await self._audio_ready.wait()
                    finally:
                        wake.cancel()
                    continue
                turn_id, frame = item
                if turn_id != playing:
                    playing, next_t = turn_id, None
                    await self._first_frame(turn_id)
                await self.sink.send_audio(frame)
                now = time.monotonic()
                self.keeper.quiet_since = now
                if next_t is None or next_t < now - lead_s:
                    next_t = now - lead_s
                next_t += FRAME_S
                if next_t > now:
                    await asyncio.sleep(next_t - now)

    async def _first_frame(self, turn_id: str) -> None:
        turn = self.turns.get(turn_id)
        ts = now_ms()
        if turn is not None and turn.first_played_ts_ms:
            return  # resumed after a pause: the turn's playback started long ago
        if turn is not None:
            turn.first_played_ts_ms = ts
            if turn.state is TurnState.THINKING:
                turn.advance(TurnState.SPEAKING)
            if turn.speech_end_ts_ms:
                VOICE_TO_VOICE.observe(ts - turn.speech_end_ts_ms)
                load.observe_turn(load.gateway_of(self.channel), (ts - turn.speech_end_ts_ms) / 1000)
        if turn_id == self.greeting_turn:
            GREETING_LATENCY.observe(ts - self._started_ms)
            log.info("call.greeting_started", after_ms=ts - self._started_ms)
        await self.bus.publish(
            subjects.lifecycle(self.call_id), PlaybackStarted(call_id=self.call_id, turn_id=turn_id)
        )

    async def _complete_finished(self) -> None:
        for audio in self.playout.pop_finished():
            turn = self.turns.get(audio.turn_id)
            if turn is None or not turn.live:
                continue
            turn.played_text = turn.bot_text
            turn.played_ms = self.keeper.ms(audio.played_bytes)
            if turn.state is TurnState.LISTENING:
                turn.advance(TurnState.THINKING)
            turn.advance(TurnState.DONE, turn.completed_outcome(bool(audio.played_bytes)))
            await self.keeper.report(turn)
            if turn.transfer_to:
                await self.bus.publish(
                    subjects.control(self.call_id),
                    ControlTransfer(
                        call_id=self.call_id,
                        destination=turn.transfer_to,
                        reason="robot",
                        summary=self.summary(turn.intent, "robot"),
                    ),
                )
            if turn.hangup_after:
                self._spawn(self.end("robot_hangup"), "hangup")

    # ---- bus handlers (each subscription delivers in order; handlers never block) -------------------
    async def _on_vad(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, VadSpeechStarted | VadSpeechEnded | VadSpeechPaused | VadSpeechResumed):
            if not self.streaming.from_owner("vad", msg.epoch):
                return None  # a replaced owner's late event
            self.streaming.audio_log.on_vad(msg)
        if isinstance(msg, VadSpeechStarted):
            await self.keeper.caller_started(msg)
            await self.sink.send_event({"type": "vad.speech_started", "turn_id": msg.turn_id})
        elif isinstance(msg, VadSpeechEnded):
            self.keeper.caller_ended(msg)
        elif isinstance(msg, VadSpeechPaused | VadSpeechResumed):
            self.keeper.caller_paused(msg.turn_id, isinstance(msg, VadSpeechPaused))
        return None

    async def _on_asr(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, AsrFinal) and self.streaming.from_owner("asr", msg.epoch):
            self.streaming.audio_log.on_final(msg)
            await self.keeper.transcript(msg)
        return None

    def _live_reply(self, turn_id: str) -> Turn | None:
        """The live turn a reply message belongs to, or None (stale, or the reply was replaced by
        the fallback line after a missed deadline: counted and dropped)."""
        turn = self.turns.get(turn_id)
        if turn is None or not turn.accepts_reply:
            return None
        if self.replies_held and turn.kind is not TurnKind.GREETING:
            return None
        return turn

    async def _on_sentence(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, LlmSentence):
            return None
        turn = self._live_reply(msg.turn_id)
        if turn is None:
            return None
        # realtime replies may start before the caller's transcript arrives
        turn.expects_reply = True
        turn.first_sentence_ts_ms = turn.first_sentence_ts_ms or msg.ts_ms
        turn.sentences[msg.index] = msg.text
        if msg.track:
            turn.tracks[msg.index] = msg.track
        turn.clock.sentence(msg.index, now_ms())
        self.playout.turn(msg.turn_id).sentence(msg.index).text = msg.text
        await self.sink.send_event(
            {"type": "bot.sentence", "turn_id": msg.turn_id, "index": msg.index, "text": msg.text}
        )
        return None

    async def _on_llm_done(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, LlmDone) or msg.interrupted:
            return None
        turn = self._live_reply(msg.turn_id)
        if turn is None:
            return None
        self.playout.set_expected(msg.turn_id, msg.sentences)
        turn.clock.llm_done()
        turn.hangup_after = turn.hangup_after or msg.hangup
        turn.transfer_to = turn.transfer_to or msg.transfer_to
        turn.intent = turn.intent or msg.intent
        self._audio_ready.set()
        return None

    async def _on_tts_audio(self, env: Envelope) -> Message | None:
        msg = env.message
        if not isinstance(msg, TtsAudio):
            return None
        turn = self._live_reply(msg.turn_id)
        if turn is None:
            STALE_AUDIO.inc()
            return None
        turn.expects_reply = True  # a realtime reply may come before the caller's transcript
        if msg.sample_rate != self.sample_rate:
            metrics.MESSAGES_DROPPED.labels("gateway", "tts.audio", "wrong_sample_rate").inc()
            log.warning("call.tts_wrong_rate", turn_id=msg.turn_id, rate=msg.sample_rate)
            msg.pcm = b""
        if not self.playout.add_audio(msg.turn_id, msg.index, msg.pcm, msg.last, msg.text, msg.seq):
            COPIED_AUDIO.inc()
            return None
        if not turn.first_audio_ts_ms and msg.pcm:
            turn.first_audio_ts_ms = msg.ts_ms
        turn.clock.audio(msg.index, msg.last, now_ms())
        self._audio_ready.set()
        return None

    async def _on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlHangup):
            playing = self.turns.get(self.playout.current.turn_id) if self.playout.current else None
            # graceful: the reply being heard finishes first; one not heard yet (a realtime greeting
            # its failed model will never speak) would keep the call open for nothing
            if msg.graceful and playing is not None and playing.live and playing.first_played_ts_ms:
                playing.hangup_after = True
            else:
                self._spawn(self.end(f"hangup:{msg.reason}"), "hangup")
        elif isinstance(msg, ControlTransfer | ControlRecord) and self.channel != "phone":
            # only a phone line can be handed over or recorded by the platform: say so, go on talking
            what, done = (
                ("transfer", "transferred") if isinstance(msg, ControlTransfer) else ("record", "recorded")
            )
            kind, detail = f"{what}_unsupported", f"a {self.channel} call cannot be {done} by the platform"
            if isinstance(msg, ControlRecord):  # control.record drives FreeSWITCH's own recorder
                kept = "is recorded by the gateway" if self.recording is not None else "is not recorded"
                detail = f"control.record is FreeSWITCH's recorder; this {self.channel} call {kept}"
            log.warning("call.control_unsupported", kind=kind)
            await self._publish_error(self.channel_stage, kind, detail)
        return None

    @property
    def channel_stage(self) -> str:
        """The stage name of this call's gateway in a ``stage.error``."""
        return "gateway-fs" if self.channel == "phone" else "gateway-web"

    def summary(self, intent: str, reason: str) -> dict[str, str]:
        """The call's summary for a person taking it over (``ControlTransfer.summary``)."""
        return call_summary(
            self.turns,
            call_id=self.call_id,
            robot=self.robot.name,
            caller=self.caller,
            intent=intent,
            reason=reason,
        )

    async def press_key(self, key: str) -> None:
        """A key the caller pressed (DTMF): published as ``call.dtmf``, then part of a caller turn
        (``DigitTurns``). Call it for one key at a time, in the order they were pressed."""
        if not self.ended:
            with bind_call(call_id=self.call_id):
                await self.bus.publish(
                    subjects.lifecycle(self.call_id), CallDtmf(call_id=self.call_id, digits=key[:8])
                )
                await self.digits.press(key)

    async def _on_lifecycle(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, PromptSwitched):  # a topic robot changed its prompt: the client shows it
            event = {"type": "prompt.switched", "turn_id": msg.turn_id, "prompt": msg.to_prompt}
            await self.sink.send_event(event | {"from_prompt": msg.from_prompt, "matched": msg.matched})
            return None
        if isinstance(msg, StageError):
            # the detail is the stage's own one-line cause (providers keep secrets out of it)
            event = {"type": "error", "stage": msg.stage, "kind": msg.kind, "turn_id": msg.turn_id}
            await self.sink.send_event(
                {**event, "detail": msg.detail[:MAX_ERROR_DETAIL], "retryable": msg.retryable}
            )
            turn = self._live_reply(msg.turn_id) if msg.turn_id else None
            if turn is None:
                return None
            if msg.stage == "asr" and not turn.expects_reply:
                if turn.state is TurnState.LISTENING:
                    turn.advance(TurnState.THINKING)
                turn.advance(TurnState.DONE, "no_reply")  # nothing recognized: no bot turn follows
            elif msg.stage in ("llm", "prompt-router", "router") and not turn.sentences:
                # the whole reply is lost: the caller hears the fallback line, not silence
                await self.keeper.fall_back(turn, msg.stage, failed=True)
            elif msg.stage in ("llm", "prompt-router", "router"):
                # the reply stops where it failed: play what was said, then the turn is done
                self.playout.set_expected(msg.turn_id, len(turn.sentences))
                turn.clock.llm_done()
                self._audio_ready.set()
        return None
