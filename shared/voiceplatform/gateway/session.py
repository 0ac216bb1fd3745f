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

from voiceplatform import subjects
from voiceplatform.bus import Bus, Subscription
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
from voiceplatform.gateway.session_inbox import StageInbox
from voiceplatform.gateway.session_pacer import PlayoutPacer
from voiceplatform.gateway.turn_keeper import TurnKeeper
from voiceplatform.gateway.turn_policy import Cut
from voiceplatform.gateway.turns import Turn, TurnKind, TurnState, TurnTable
from voiceplatform.logging import bind_call
from voiceplatform.outbound.template import fill
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.runtime.tasks import TaskRegistry
from voiceplatform.wire import (
    AssignRequest,
    AudioChunk,
    CallDtmf,
    CallEnded,
    CallStarted,
    LlmSentence,
    frame_bytes,
)

log = structlog.get_logger("voiceplatform.gateway")


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
                call_id=self.call_id,
                role="",
                robot=robot.name,
                sample_rate=sample_rate,
                channel=channel,
                variables=self.variables,
            ),
            directory=directory,
            spawn=self.spawn,
            ended=lambda: self.ended,
            next_seq=lambda: self._seq,
            on_refused=lambda role, why: self.publish_error(role, "unassigned", why),
        )
        # the phone path: what the caller heard comes from the media server (heard.py)
        self.playout = Playout(frame_bytes(sample_rate), clock)
        self.audio_ready = asyncio.Event()
        self.keeper = TurnKeeper(
            call_id=self.call_id,
            bus=bus,
            sink=self.sink,
            playout=self.playout,
            settings=robot.settings,
            sample_rate=sample_rate,
            ahead_ms=lead_frames * 20 + sink_ahead_ms,
            spawn=self.spawn,
            wake=self.audio_ready.set,
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
        self.started_ms = now_ms()
        self.closed = asyncio.Event()
        self.inbox = StageInbox(self)
        self.pacer = PlayoutPacer(self)

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
            inbox = self.inbox
            subscriptions = [
                (subjects.vad(self.call_id), inbox.on_vad),
                (subjects.asr(self.call_id), inbox.on_asr),
                (subjects.llm_sentence(self.call_id), inbox.on_sentence),
                (subjects.llm_done(self.call_id), inbox.on_llm_done),
                (subjects.tts_audio(self.call_id), inbox.on_tts_audio),
                (subjects.control(self.call_id), inbox.on_control),
                (subjects.lifecycle(self.call_id), inbox.on_lifecycle),
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
            self.spawn(self.pacer.run(), "playout")
            for role in owned_roles_for(self.robot.settings.mode):
                self.request_reassign(role, "call_start")
            self.spawn(self._max_duration(), "max-duration")
            if self.robot.settings.turns.no_input_s > 0 and self.robot.settings.mode != "realtime":
                self.spawn(self.keeper.watch_silence(lambda: self.ended), "no-input")
            if self.robot.settings.deadlines.enabled and self.robot.settings.mode != "realtime":
                self.spawn(self.keeper.watch_deadlines(lambda: self.ended), "deadlines")

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
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
        chunk = self._keep(frame)
        if chunk is not None:
            await self._publish(chunk)

    def push_audio_nowait(self, frame: bytes) -> None:
        """``push_audio`` for a session with an outbox: nothing to await, so a socket's read callback
        can hand the frame over itself (gateway-fs: no task woken per frame)."""
        if self.outbox is None:
            raise RuntimeError("push_audio_nowait needs a session with an outbox")
        chunk = self._keep(frame)
        if chunk is not None:
            self.outbox.put(self._audio_subject, chunk)

    def _keep(self, frame: bytes) -> AudioChunk | None:
        """Record the frame and keep it for replay; the chunk to publish when one is full."""
        if self.ended:
            return None
        if self.recording is not None:
            self.recording.caller(frame)
        self.streaming.audio_log.keep(self._seq, frame)  # replayed to a new vad/asr owner
        self._seq += 1
        self._unsent.append(frame)
        return self._chunk() if len(self._unsent) >= self.frames_per_message else None

    async def _send_frames(self) -> None:
        """Publish the frames not sent yet as one ``audio.chunk``."""
        chunk = self._chunk()
        if chunk is not None:
            await self._publish(chunk)

    def _chunk(self) -> AudioChunk | None:
        """The frames not sent yet as one ``audio.chunk`` (v2 when it holds several)."""
        frames, self._unsent = self._unsent, []
        if not frames:
            return None
        return AudioChunk(
            call_id=self.call_id,
            seq=self._seq - len(frames),
            sample_rate=self.sample_rate,
            pcm=frames[0] if len(frames) == 1 else b"".join(frames),
            v=1 if len(frames) == 1 else 2,
        )

    async def _publish(self, chunk: AudioChunk) -> None:
        if self.outbox is not None:
            self.outbox.put(self._audio_subject, chunk)
        else:
            await self.bus.publish(self._audio_subject, chunk)

    # ---- ownership ----------------------------------------------------------------------------
    def request_reassign(self, role: str, reason: str) -> None:
        self.streaming.request_reassign(role, reason)

    async def publish_error(self, stage: str, kind: str, detail: str, turn_id: str = "") -> None:
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
            self.audio_ready.set()
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
