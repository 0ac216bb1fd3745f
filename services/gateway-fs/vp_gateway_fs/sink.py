"""The FreeSWITCH side of a call's robot audio: segments → mod_audio_stream files → playback queue.

The community mod_audio_stream does not play what the server sends: a ``streamAudio`` text frame
makes it write a file and raise ``mod_audio_stream::play`` with the path
(docs/protocols/freeswitch.md). So the sink cuts the paced frames ``CallSession`` gives it into
segments, sends each as one ``streamAudio`` frame over the call's own WebSocket, and on the play
event queues the file on the channel with ``sendmsg <uuid>`` / ``execute playback <file>`` over the
ESL (``playback="execute"``, the default). Files of one channel play one after the other, in order,
1-2 ms apart: the caller hears one continuous voice. The older path, ``uuid_broadcast <uuid> <file>
aleg`` (``playback="broadcast"``), makes FreeSWITCH read 5 frames (100 ms) before every file, so
400 ms segments played with 100 ms holes and 25 % slower than real time; it is kept only to measure
against (docs/telephony.md).
Why files at all: it needs nothing but the two modules the dialplan already uses, no shared volume
(FreeSWITCH writes the files itself), and the first word costs one small file write and two local
round trips; a barge-in is one ``uuid_break <uuid> all``, which stops the current file and drops
the queued ones at once.

What the caller heard (``unheard_bytes``, the session's ``PlaybackClock``): a file counts from its
``PLAYBACK_START`` in real time until its ``PLAYBACK_STOP``. A file FreeSWITCH cannot open fires
neither, only ``CHANNEL_EXECUTE_COMPLETE`` (``FILE NOT FOUND``): that ends it as lost. Should both
be missed, a started file ends ``stop_grace_s`` after its audio would have, and files that never
start end once nothing has started for ``stop_grace_s`` (counted as ``no_stop``), so neither the
session nor ``close`` waits for an event that will not come.

Segment sizes: the session sends ``lead`` frames at once, then one every 20 ms. Segment k (frames
a..b) is complete when frame b arrives, at (b - lead) x 20 ms, and must be queued before FreeSWITCH
reaches frame a, at a x 20 ms: the margin is (lead - n + 1) x 20 ms for an n-frame segment. With
lead 25 frames (500 ms) and 400 ms segments the margin is 120 ms of network, file write and ESL in
the steady state; the first segment of a turn (after any idle gap) is small (160 ms), so the first
word is out at once and is not held back behind a large segment. A segment that is not full when
frames stop coming (end of a turn, TTS slower than real time) goes out after ``idle_flush_s``.

Barge-in: ``flush`` bumps an epoch and sends ``uuid_break <uuid> all`` before anything else; files of
an older epoch whose play event arrives later are never broadcast. ``close`` (the session ended)
lets what was queued finish playing (a goodbye), then hangs up with ``uuid_kill`` unless the caller
already did or the call was transferred, and only then closes the WebSocket (mod_audio_stream
deletes its files when the stream ends).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter

from voiceplatform.runtime import TaskRegistry
from voiceplatform.wire import frame_bytes
from vp_gateway_fs.esl import EslClient, EslError, EslEvent, EslReply
from vp_gateway_fs.played import PlayedFiles
from vp_gateway_fs.stream_socket import StreamClosed, StreamSocket

log = structlog.get_logger("vp_gateway_fs.sink")

SEGMENTS = Counter("vp_gateway_fs_segments_total", "Robot audio segments pushed to FreeSWITCH")
PLAYBACK_LOST = Counter(
    "vp_gateway_fs_playback_lost_total", "Robot audio segments that could not be played", ["reason"]
)
COMMAND_ERRORS = Counter(
    "vp_gateway_fs_esl_command_errors_total", "ESL commands that failed", ["command", "kind"]
)
DRAIN_TIMEOUTS = Counter(
    "vp_gateway_fs_drain_timeouts_total", "Hangups that waited for queued robot audio until the timeout"
)
GONE_MARKERS = ("no such channel", "invalid uuid", "invalid session id")


@dataclass
class _Segment:
    epoch: int
    nbytes: int
    pcm: bytes = b""  # kept only for a listener of heard audio (the call's recording)


def command_failed(command: str, uuid: str, error: EslError | EslReply) -> None:
    """Count and log a failed ESL command (never with its arguments: paths, numbers)."""
    kind = "reply" if isinstance(error, EslReply) else type(error).__name__
    COMMAND_ERRORS.labels(command, kind).inc()
    detail = error.text if isinstance(error, EslReply) else str(error)
    log.error("fs.command_failed", command=command, uuid=uuid, kind=kind, detail=detail[:120])


class FsSink:
    def __init__(
        self,
        ws: StreamSocket,
        esl: EslClient,
        uuid: str,
        rate: int,
        *,
        first_segment_ms: int = 160,
        segment_ms: int = 400,
        idle_flush_s: float = 0.06,
        forward_events: bool = True,
        on_channel_gone: Callable[[], None] | None = None,
        playback: str = "execute",
        stop_grace_s: float = 1.0,
    ) -> None:
        if playback not in ("execute", "broadcast"):
            raise ValueError(f"playback must be 'execute' or 'broadcast', not {playback!r}")
        self.ws, self.esl, self.uuid, self.rate = ws, esl, uuid, rate
        self.playback = playback
        self.stop_grace_s = stop_grace_s
        frame = frame_bytes(rate)
        self.first_bytes = max(frame, first_segment_ms // 20 * frame)
        self.segment_bytes = max(frame, segment_ms // 20 * frame)
        self.idle_flush_s = idle_flush_s
        self.forward_events = forward_events
        self.on_channel_gone = on_channel_gone
        self.open = True  # taking robot audio
        self._finished = False  # closed: no more broadcasts
        self.channel_alive = True  # False once FreeSWITCH reports the hangup
        self.hangup_on_close = True  # False after a transfer: the channel lives on without us
        self.drain_on_close = True  # let queued robot audio finish before hanging up (a goodbye)
        self.first_playback_at: float | None = None  # monotonic, first PLAYBACK_START of ours
        self._buffer = bytearray()
        self._fresh = True  # next segment is the first of a burst: small
        self._epoch = 0
        self._sent: deque[_Segment] = deque()  # streamAudio frames awaiting their play event
        self._queued = PlayedFiles(rate, stop_grace_s)  # files queued on the channel, not yet stopped
        self._drained = asyncio.Event()
        self._drained.set()
        self._idle: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks = TaskRegistry()
        # HeardAudio: the call's recording places robot audio when its file starts playing
        self._heard: Callable[[bytes, float], None] | None = None
        self._unheard_after: Callable[[float], None] | None = None
        self._pcm_of_file: dict[str, bytes] = {}  # queued files' audio, until they start

    def report_heard(
        self, heard: Callable[[bytes, float], None], unheard_after: Callable[[float], None]
    ) -> None:
        """``HeardAudio`` (voiceplatform.gateway.recording): tell ``heard`` each file's audio when
        FreeSWITCH starts playing it, and ``unheard_after`` when the caller hangs up."""
        self._heard, self._unheard_after = heard, unheard_after

    # ---- AudioSink --------------------------------------------------------------------------------
    async def send_audio(self, pcm: bytes) -> None:
        if not self.open:
            return
        self._buffer += pcm
        self._drained.clear()
        if len(self._buffer) >= (self.first_bytes if self._fresh else self.segment_bytes):
            self._fresh = False
            await self._ship()
        self._arm_idle()

    async def send_event(self, event: dict[str, Any]) -> None:
        if self.forward_events and event.get("type") != "heartbeat":
            await self._send_text(json.dumps(event, ensure_ascii=False))

    async def flush(self, turn_id: str) -> None:
        """Barge-in: stop FreeSWITCH's playback now and forget every segment not yet played."""
        self._epoch += 1
        self._buffer.clear()
        self._fresh = True
        self._queued.clear()
        self._pcm_of_file.clear()
        self._update_drained()
        try:
            reply = await self.esl.command(f"api uuid_break {self.uuid} all")
        except EslError as exc:
            command_failed("uuid_break", self.uuid, exc)
            return
        if not reply.ok:
            command_failed("uuid_break", self.uuid, reply)
        log.info("fs.playback_flushed", turn_id=turn_id)

    async def close(self, reason: str) -> None:
        if not self.open:
            return
        self.open = False
        self._cancel_idle()
        if self.channel_alive and self.hangup_on_close:
            if self.drain_on_close and self.ws.connected:
                if self._buffer:
                    await self._ship()
                if not await self.wait_drained(self.pending_audio_s() + self.stop_grace_s + 0.5):
                    DRAIN_TIMEOUTS.inc()
                    log.warning("fs.drain_timeout", uuid=self.uuid)
            await self.hangup("NORMAL_CLEARING")
        self._finished = True
        await self._tasks.cancel_all(1.0)
        if self.ws.connected:
            with contextlib.suppress(Exception):
                await self.ws.close(code=1000, reason=reason[:120])

    # ---- FreeSWITCH commands ----------------------------------------------------------------------
    async def hangup(self, cause: str) -> bool:
        if not self.channel_alive:
            return True
        try:
            reply = await self.esl.command(f"api uuid_kill {self.uuid} {cause}")
        except EslError as exc:
            command_failed("uuid_kill", self.uuid, exc)
            return False
        if not reply.ok and not any(m in reply.text.lower() for m in GONE_MARKERS):
            command_failed("uuid_kill", self.uuid, reply)
            return False
        self.channel_alive = False
        return True

    def channel_gone(self) -> None:
        """FreeSWITCH hung the channel up: nothing queued will play, and nothing is to hang up.
        What was not heard by then stays unheard (the clock stops), so the session's cut at the
        end of the call records what the caller heard before hanging up."""
        self.channel_alive = False
        self.hung_up(time.monotonic())
        self._buffer.clear()
        self._update_drained()

    def hung_up(self, at: float) -> None:
        """``CHANNEL_HANGUP``: the caller hears nothing after ``at`` (the clock stops there)."""
        first = self._queued.frozen_at is None
        self._queued.freeze(at)
        self._pcm_of_file.clear()
        if first and self._unheard_after is not None:
            self._unheard_after(at)

    def unheard_bytes(self) -> int:
        """``PlaybackClock``: robot audio given to the sink that the caller has not heard yet."""
        now = time.monotonic()
        self._expire(now)
        return len(self._buffer) + sum(s.nbytes for s in self._sent) + self._queued.unheard(now)

    def pending_audio_s(self) -> float:
        return self.unheard_bytes() / 2 / self.rate

    async def wait_drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._drained.is_set() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), min(left, 0.1))
            self._expire(time.monotonic())
        return self._drained.is_set()

    # ---- ESL events of this channel (called by the ESL reader: never block) -----------------------
    def on_play(self, event: EslEvent) -> None:
        """``mod_audio_stream::play``: the file of our oldest unacknowledged segment is written."""
        segment = self._sent.popleft() if self._sent else None
        try:
            path = str(json.loads(event.body).get("file", ""))
        except (json.JSONDecodeError, AttributeError):
            path = ""
        if segment is None or segment.epoch != self._epoch or self._finished or not self.channel_alive:
            PLAYBACK_LOST.labels("stale" if segment is not None else "unexpected").inc()
            self._update_drained()
            return
        if not path or any(c.isspace() for c in path):
            PLAYBACK_LOST.labels("bad_path").inc()
            log.error("fs.play_event_without_usable_file", uuid=self.uuid)
            self._update_drained()
            return
        command = "sendmsg" if self.playback == "execute" else "uuid_broadcast"
        try:
            if self.playback == "execute":  # no lead frames: queued files play back to back
                execute = [("execute-app-name", "playback"), ("execute-app-arg", path)]
                future = self.esl.submit_sendmsg(self.uuid, [("call-command", "execute"), *execute])
            else:
                future = self.esl.submit(f"api uuid_broadcast {self.uuid} {path} aleg")
        except EslError as exc:
            PLAYBACK_LOST.labels("esl_unavailable").inc()
            command_failed(command, self.uuid, exc)
            self._update_drained()
            return
        self._queued.queue(path, segment.nbytes)
        if self._heard is not None:
            self._pcm_of_file[path] = segment.pcm
        self._tasks.spawn(self._check_queued(future, path, command), name=f"queue-{self.uuid}")

    def on_playback(self, event: EslEvent) -> None:
        if self._queued.frozen_at is not None:
            return  # the hangup stopped the clock: the files it cut stay unheard
        path = event.headers.get("Playback-File-Path", "")
        if event.name == "PLAYBACK_START":
            if not self._queued.started(path, event.received):
                return
            if self.first_playback_at is None:
                self.first_playback_at = event.received
            pcm = self._pcm_of_file.pop(path, b"")
            if pcm and self._heard is not None:
                self._heard(pcm, event.received)
        elif event.name == "PLAYBACK_STOP":
            self._queued.stopped(path, event.received)
            self._pcm_of_file.pop(path, None)
            self._update_drained()

    def on_execute_complete(self, event: EslEvent) -> None:
        """``CHANNEL_EXECUTE_COMPLETE`` of ``playback``: a file that never started is over (lost)."""
        if event.headers.get("Application") != "playback":
            return
        path = event.headers.get("Application-Data", "")
        if not self._queued.never_started(path, event.received):
            return  # not ours, or it started: its PLAYBACK_STOP does the rest
        self._pcm_of_file.pop(path, None)
        PLAYBACK_LOST.labels("not_played").inc()
        response = event.headers.get("Application-Response", "")[:40]
        log.error("fs.file_not_played", uuid=self.uuid, response=response)
        self._update_drained()

    def _expire(self, now: float) -> None:
        """Files whose end FreeSWITCH never reported: over once they cannot be playing any more."""
        lapsed = self._queued.expire(now)
        if lapsed and self._pcm_of_file:
            self._pcm_of_file = {p: a for p, a in self._pcm_of_file.items() if p in self._queued.files}
        if lapsed:
            PLAYBACK_LOST.labels("no_stop").inc(lapsed)
            log.warning("fs.playback_stop_missing", uuid=self.uuid, files=lapsed)
            self._update_drained()

    # ---- internals --------------------------------------------------------------------------------
    async def _check_queued(self, future: asyncio.Future[EslReply], path: str, command: str) -> None:
        try:
            reply = await self.esl.wait(future)
        except EslError as exc:
            reply = None
            command_failed(command, self.uuid, exc)
        if reply is not None and reply.ok:
            return
        PLAYBACK_LOST.labels("queue_failed").inc()
        self._queued.forget(path)
        self._pcm_of_file.pop(path, None)
        self._update_drained()
        if reply is not None:
            command_failed(command, self.uuid, reply)
            if any(m in reply.text.lower() for m in GONE_MARKERS):
                self.channel_gone()
                if self.on_channel_gone is not None:
                    self.on_channel_gone()

    async def _ship(self) -> None:
        data = bytes(self._buffer)
        self._buffer.clear()
        self._sent.append(_Segment(self._epoch, len(data), data if self._heard is not None else b""))
        SEGMENTS.inc()
        frame = {
            "type": "streamAudio",
            "data": {
                "audioDataType": "raw",
                "sampleRate": self.rate,
                "audioData": base64.b64encode(data).decode(),
            },
        }
        if not await self._send_text(json.dumps(frame)):
            self._sent.pop()
            PLAYBACK_LOST.labels("stream_closed").inc()
            self._update_drained()

    async def _send_text(self, text: str) -> bool:
        if not self.ws.connected:
            return False
        async with self._lock:
            try:
                await self.ws.send_text(text)
            except (StreamClosed, RuntimeError, OSError):
                return False
        return True

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().call_later(self.idle_flush_s, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _on_idle(self) -> None:
        self._idle = None
        self._fresh = True
        if self._buffer and self.open:
            self._tasks.spawn(self._ship(), name=f"ship-{self.uuid}")

    def _update_drained(self) -> None:
        if self._queued.frozen_at is not None or (not self._buffer and not self._sent and not self._queued):
            self._drained.set()
        else:
            self._drained.clear()
