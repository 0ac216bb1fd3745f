"""One phone call: the shared ``CallSession`` plus what only a FreeSWITCH channel has.

``CallSession`` (the same as for a browser, at 8 or 16 kHz) does assignment, greeting, playout
pacing, barge-in and the call's record. This object adds the channel: its ESL events (hangup, DTMF,
playback, mod_audio_stream's play/error), and the control messages only a phone can honour:
``ControlTransfer`` → ``uuid_setvar vp_<key>`` for each entry of its summary, then ``uuid_transfer``;
``ControlRecord`` (or the robot's ``recording.enabled``) → ``uuid_record``, announced as
``call.recording`` with the file's path. Each DTMF key goes to the session, which publishes it
(``call.dtmf``) and makes the keys a caller turn (``voiceplatform.gateway.digits``). Whatever ends the
call (caller hangup, the stream or the ESL failing, the robot), ``CallSession.end`` runs once with
the reason, so the record is always closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from voiceplatform import metrics, subjects
from voiceplatform.bus import Bus, Envelope, Subscription
from voiceplatform.gateway import CallSession
from voiceplatform.gateway.handover import clean_value
from voiceplatform.logging import bind_call
from voiceplatform.runtime import TaskRegistry, cancel_and_wait
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import (
    CallRecording,
    ControlInterrupt,
    ControlRecord,
    ControlTransfer,
    Message,
    TtsAudio,
)
from vp_gateway_fs.amd_watch import AmdWatch
from vp_gateway_fs.channels import ChannelFacts
from vp_gateway_fs.esl import EslClient, EslError, EslEvent
from vp_gateway_fs.greeting import GreetingCapture
from vp_gateway_fs.sink import FsSink, command_failed

log = structlog.get_logger("vp_gateway_fs.call")

ANSWER_TO_AUDIO = Histogram(
    "vp_gateway_fs_answer_to_first_audio_ms",
    "CHANNEL_ANSWER → PLAYBACK_START of the first robot segment (the greeting)",
    buckets=metrics.LATENCY_BUCKETS_MS,
)
DTMF_IN = Counter("vp_gateway_fs_dtmf_total", "DTMF digits received from callers")
# uuid_transfer arguments: <dest-exten> [<dialplan>] [<context>], each a plain token
_TRANSFER_TOKEN = re.compile(r"^[A-Za-z0-9_+*#@.:=-]{1,64}$")
_VARIABLE = re.compile(r"^[a-z0-9_]{1,64}$")
NORMAL_CAUSES = ("", "NORMAL_CLEARING", "ORIGINATOR_CANCEL")
END_TIMEOUT_S = 30.0


class PhoneCall:
    def __init__(
        self,
        *,
        uuid: str,
        session: CallSession,
        sink: FsSink,
        bus: Bus,
        esl: EslClient,
        recordings_dir: Path,
        answered_at: float | None = None,
        greeting_capture: GreetingCapture | None = None,
        facts: ChannelFacts | None = None,
    ) -> None:
        self.uuid = uuid
        self.facts = facts or ChannelFacts(uuid)  # caller, dialled number: as FreeSWITCH announced them
        self.session = session
        self.sink = sink
        self.bus = bus
        self.esl = esl
        self.recordings_dir = recordings_dir
        self.answered_at = answered_at
        self.greeting_capture = greeting_capture
        self._capture_sub: Subscription | None = None
        self.recording: str | None = None
        self._subs: list[Subscription] = []
        self._tasks = TaskRegistry()
        self._greeting_seen = False
        self.hangup_seen = asyncio.Event()
        self._keys = asyncio.Lock()
        self.amd: AmdWatch | None = None  # an outbound call's answering-machine detection

    @property
    def call_id(self) -> str:
        return self.session.call_id

    async def start(self) -> None:
        self._subs.append(await self.bus.subscribe(subjects.control(self.call_id), self._on_control))
        if self.greeting_capture is not None:
            self._capture_sub = await self.bus.subscribe(subjects.tts_audio(self.call_id), self._on_greeting)
        if self.amd is not None:
            await self.amd.start()
        await self.session.start()
        if self.session.robot.settings.recording.enabled:
            self._spawn(self.record("start"), "record")

    async def end(self, reason: str) -> None:
        with bind_call(call_id=self.call_id):
            await self.session.end(reason)
            # the session may be ending in another task (robot hangup: the goodbye is still playing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.session.closed.wait(), END_TIMEOUT_S)
            for sub in self._subs:
                await sub.unsubscribe()
            self._subs.clear()
            await self._stop_capture()
            if self.amd is not None:
                await self.amd.stop()
            current = asyncio.current_task()
            for task in self._tasks.all_tasks():
                if task is not current:
                    await cancel_and_wait(task, 1.0)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.spawn(coro, name=f"{self.call_id}-{name}")

    # ---- ESL events of this channel (from the ESL reader: quick, never blocking) -------------------
    def on_event(self, event: EslEvent) -> None:
        name = event.name
        if name in ("PLAYBACK_START", "PLAYBACK_STOP"):
            self.sink.on_playback(event)
            if self.sink.first_playback_at is not None and not self._greeting_seen:
                self._greeting_seen = True
                if self.answered_at is not None:
                    after_ms = (self.sink.first_playback_at - self.answered_at) * 1000
                    ANSWER_TO_AUDIO.observe(after_ms)
                    log.info("fs.first_audio_played", call_id=self.call_id, after_answer_ms=int(after_ms))
        elif name == "CHANNEL_HANGUP":  # playback stops here; the rest follows on HANGUP_COMPLETE
            self.sink.hung_up(event.received)
        elif name == "CHANNEL_EXECUTE_COMPLETE":
            self.sink.on_execute_complete(event)
        elif name == "CUSTOM":
            self._on_stream_event(event)
        elif name == "CHANNEL_ANSWER":
            self.answered_at = self.answered_at or event.received
        elif name == "DTMF":
            digit = event.headers.get("DTMF-Digit", "")[:8]
            if digit:
                DTMF_IN.inc()
                self._spawn(self._key(digit), "dtmf")
        elif name == "CHANNEL_HANGUP_COMPLETE":
            self.sink.channel_gone()
            cause = event.headers.get("Hangup-Cause", "")
            self.hangup_seen.set()
            reason = "caller_hangup" if cause in NORMAL_CAUSES else f"caller_hangup:{cause[:40]}"
            self._spawn(self.end(self.session.end_reason or reason), "hangup")

    def _on_stream_event(self, event: EslEvent) -> None:
        subclass = event.subclass
        if subclass == "mod_audio_stream::play":
            self.sink.on_play(event)
        elif subclass == "mod_audio_stream::error":
            log.error("fs.stream_error", call_id=self.call_id, detail=event.body[:200])
            self.sink.drain_on_close = False
            self._spawn(self.end("stream_error"), "stream-error")
        elif subclass == "mod_audio_stream::disconnect":
            log.info("fs.stream_disconnected", call_id=self.call_id)

    def channel_gone(self) -> None:
        """FreeSWITCH no longer knows the channel (a hangup whose event we missed)."""
        self.sink.channel_gone()
        self.hangup_seen.set()
        self._spawn(self.end(self.session.end_reason or "channel_gone"), "gone")

    async def _publish(self, msg: Message) -> None:
        await self.bus.publish(subjects.lifecycle(self.call_id), msg)

    async def _key(self, digit: str) -> None:
        """Keys are handled one after another, in the order FreeSWITCH reported them."""
        async with self._keys:
            await self.session.press_key(digit)

    # ---- the synthesized greeting, kept for the robot's next calls ---------------------------------
    async def _on_greeting(self, env: Envelope) -> Message | None:
        capture = self.greeting_capture
        if capture is not None and isinstance(env.message, TtsAudio):
            capture.add(env.message)
            if capture.done:
                self._spawn(self._stop_capture(), "greeting-captured")
        return None

    async def _stop_capture(self) -> None:
        sub, self._capture_sub = self._capture_sub, None
        if sub is not None:
            await sub.unsubscribe()

    # ---- control messages only a phone honours ------------------------------------------------------
    async def _on_control(self, env: Envelope) -> Message | None:
        msg = env.message
        if isinstance(msg, ControlInterrupt) and self.greeting_capture is not None:
            if msg.turn_id == self.greeting_capture.turn_id:
                self.greeting_capture.abandon()  # the caller did not hear it all: not worth keeping
        elif isinstance(msg, ControlTransfer):
            self._spawn(self.transfer(msg.destination, msg.summary), "transfer")
        elif isinstance(msg, ControlRecord):
            self._spawn(self.record(msg.action, msg.path), "record")
        return None

    async def transfer(self, destination: str, summary: dict[str, str] | None = None) -> bool:
        tokens = destination.split()
        if not 1 <= len(tokens) <= 3 or not all(_TRANSFER_TOKEN.match(t) for t in tokens):
            await self._error("transfer_refused", "destination must be <exten> [<dialplan>] [<context>]")
            return False
        await self.sink.flush("transfer")
        await self._set_variables(summary or {})
        try:
            reply = await self.esl.api(f"uuid_transfer {self.uuid} {' '.join(tokens)}")
        except EslError as exc:
            command_failed("uuid_transfer", self.uuid, exc)
            await self._error("transfer_failed", type(exc).__name__)
            return False
        if not reply.ok:
            command_failed("uuid_transfer", self.uuid, reply)
            await self._error("transfer_failed", reply.text[:120])
            return False
        self.sink.hangup_on_close = False  # the operator has the caller now
        self.session.transferred_to = " ".join(tokens)
        log.info("fs.transferred", call_id=self.call_id, pii_destination=destination)
        await self.end("transferred")
        return True

    async def _set_variables(self, summary: dict[str, str]) -> None:
        """The call's summary as channel variables ``vp_<key>`` (a failed one is logged, not fatal:
        the caller still reaches a person)."""
        for key, value in summary.items():
            name, value = f"vp_{key}", clean_value(value)
            if not _VARIABLE.match(name) or not value:
                continue
            try:
                reply = await self.esl.api(f"uuid_setvar {self.uuid} {name} {value}")
            except EslError as exc:
                command_failed("uuid_setvar", self.uuid, exc)
                return
            if not reply.ok:
                command_failed("uuid_setvar", self.uuid, reply)

    def _record_path(self, path: str) -> str | None:
        root = self.recordings_dir.resolve()
        target = (root / (path or f"{self.call_id}.wav")).resolve()
        if not target.is_relative_to(root) or any(c.isspace() for c in str(target)):
            return None
        return str(target)

    async def record(self, action: str, path: str = "") -> bool:
        if action == "stop" and not path:
            target: str | None = self.recording or "all"
        else:
            target = self._record_path(path)
        if target is None:
            await self._error("record_refused", "recording path must stay inside VP_FS_RECORDINGS_DIR")
            return False
        if action == "start":
            with contextlib.suppress(OSError):  # FreeSWITCH writes it; the folder may be its volume
                Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            reply = await self.esl.api(f"uuid_record {self.uuid} {action} {target}")
        except EslError as exc:
            command_failed("uuid_record", self.uuid, exc)
            await self._error("record_failed", type(exc).__name__)
            return False
        if not reply.ok:
            command_failed("uuid_record", self.uuid, reply)
            await self._error("record_failed", reply.text[:120])
            return False
        self.recording = target if action == "start" else None
        log.info("fs.recording", call_id=self.call_id, action=action, path=target)
        if target != "all":
            await self._publish(
                CallRecording(
                    call_id=self.call_id, action="start" if action == "start" else "stop", path=target
                )
            )
        return True

    async def _error(self, kind: str, detail: str) -> None:
        log.error("fs.control_failed", call_id=self.call_id, kind=kind, detail=detail)
        await publish_stage_error(
            self.bus, call_id=self.call_id, stage="gateway-fs", kind=kind, detail=detail
        )
