"""One channel of the FreeSWITCH peer: the caller's side of a phone call into the robot.

The channel has a media clock from answer to hangup: every 20 ms one frame of caller audio (what
``stream_pcm`` queued, else silence) is "received" from the phone, recorded when ``uuid_record``
runs, and handed to the mod_audio_stream media bug. Robot audio comes from the application queue
(``freeswitch_player``). Events carry the channel data FreeSWITCH adds (``Unique-ID``,
``Channel-Call-UUID``, ``Caller-Destination-Number``, ``Caller-Caller-ID-Number``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from voiceplatform_devstack.freeswitch_channel import cause_name, channel_data
from voiceplatform_devstack.freeswitch_media import Track, interleave, mix, wav_file
from voiceplatform_devstack.freeswitch_player import Playback, Player
from voiceplatform_devstack.freeswitch_stream import AudioStream
from voiceplatform_devstack.freeswitch_wire import EslPacket, FsEvent

log = structlog.get_logger("voiceplatform_devstack.freeswitch")


class ChannelHost(Protocol):
    temp_dir: Path
    record_stereo: bool

    def make_event(
        self, name: str, headers: list[tuple[str, str]], body: str | None = None, subclass: str | None = None
    ) -> FsEvent: ...
    def fire(self, event: FsEvent) -> None: ...
    def spawn(self, coro: Any, key: str) -> asyncio.Task[Any]: ...
    def channel_ended(self, call: PeerCall) -> None: ...


@dataclass
class _Recording:
    path: Path
    start: int
    timer: asyncio.Task[Any] | None = None


def _now_us() -> int:
    return time.time_ns() // 1000


class PeerCall:
    def __init__(
        self,
        host: ChannelHost,
        *,
        uuid: str,
        destination: str,
        caller: str,
        rate: int,
        ws_url: str | None,
        metadata: str | None,
        stream_rate: int,
        mix_type: str,
        idle_silence: bool,
        early_frames: int = 0,
    ) -> None:
        self.host = host
        self.early_frames = early_frames  # audio frames its stream sends before the metadata
        self.uuid, self.destination, self.caller, self.rate = uuid, destination, caller, rate
        self.ws_url, self.metadata, self.stream_rate, self.mix_type = ws_url, metadata, stream_rate, mix_type
        self.idle_silence = idle_silence
        self.temp_dir = host.temp_dir
        self.state = "ringing"  # ringing -> answered -> hangup
        self.created_us, self.answered_us, self.hangup_us = _now_us(), 0, 0
        self.plays: list[Playback] = []
        self.breaks: list[float] = []
        self.recordings: list[Path] = []
        self.transferred_to: str | None = None
        self.hangup_cause = ""
        self.answered = asyncio.Event()
        self.ended = asyncio.Event()
        self.events_text: list[dict[str, Any]] = []  # JSON objects the server sent as text frames
        self.events_text_raw: list[str] = []  # every text frame, as sent
        self.dtmf_sent: list[str] = []  # uuid_send_dtmf: digits the robot sent to the caller
        self.variables: dict[str, str] = {}
        self.stream: AudioStream | None = None
        self.caller_track, self.robot_track = Track(), Track()
        self.player = Player(self, self.plays)
        self._records: dict[str, _Recording] = {}
        self._caller_buf = bytearray()
        self._consumed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._k = 0
        # load generators measure pacing here: (when the frame was due, when it went out), monotonic
        self.on_frame: Callable[[float, float], None] | None = None
        self._t0 = 0.0
        self._media_lock = asyncio.Lock()
        self._clock: asyncio.Task[Any] | None = None
        self._player: asyncio.Task[Any] | None = None

    # ---- what tests drive -----------------------------------------------------------------------
    async def answer(self) -> None:
        """CHANNEL_ANSWER, then (api_on_answer) the stream opens: metadata first, then the connect event."""
        if self.mark_answered() and self.ws_url:
            stream = self.attach_stream(self.ws_url, self.mix_type, self.stream_rate, self.metadata)
            if stream is not None:
                await stream.connect()

    async def stream_pcm(self, pcm: bytes, *, realtime: bool = True) -> None:
        """Caller audio (L16 at the call rate) in 20 ms frames; returns once it has all been sent.

        A ringing call is waited for; once the call has ended the audio goes nowhere (no error: a
        robot may hang up on a caller who is still talking).
        """
        if self.state == "ringing":
            waits = [asyncio.ensure_future(self.answered.wait()), asyncio.ensure_future(self.ended.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if self.state != "answered":
            return
        pcm = pcm[: len(pcm) // 2 * 2]
        if not realtime:
            async with self._media_lock:
                self._caller_buf += pcm
                while self._caller_buf and self.state == "answered":
                    await self._tick()
                self._t0 = time.monotonic() + 0.02 - self._k * 0.02  # the clock resumes from now
            return
        self._caller_buf += pcm
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._consumed + len(self._caller_buf), future))
        await future

    async def stream_silence(self, seconds: float) -> None:
        await self.stream_pcm(bytes(round(seconds * self.rate) * 2))

    async def send_dtmf(self, digits: str) -> None:
        for digit in digits:
            self.fire("DTMF", [("DTMF-Digit", digit), ("DTMF-Duration", "2000"), ("DTMF-Source", "RTP")])
            await asyncio.sleep(0)

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up."""
        self.begin_hangup(cause)
        await self.ended.wait()

    async def close_stream_abruptly(self) -> None:
        """The mod_audio_stream WebSocket dies without a close frame (the TCP connection is cut)."""
        if self.stream is not None:
            self.stream.abort()
            await asyncio.sleep(0)

    async def send_ws_text(self, text: str) -> None:
        if self.stream is not None and self.stream.ws is not None:
            await self.stream.ws.send(text)

    async def send_ws_bytes(self, data: bytes) -> None:
        if self.stream is not None and self.stream.ws is not None:
            await self.stream.ws.send(data)

    def heard(self) -> bytes:
        """Robot audio as the caller heard it, in order, at the call rate (a running playback so far)."""
        return self.player.heard()

    # ---- channel internals (api commands) -------------------------------------------------------
    def fire(
        self, name: str, extra: list[tuple[str, str]], body: str | None = None, subclass: str | None = None
    ) -> None:
        self.host.fire(self.host.make_event(name, self.channel_data() + extra, body, subclass))

    def fire_custom(self, subclass: str, body: str) -> None:
        self.fire("CUSTOM", [], body, subclass)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        return self.host.spawn(coro, self.uuid)

    def media_index(self) -> int:
        return self._k * (self.rate // 50)

    def recording(self) -> bool:
        return bool(self._records)

    def start(self) -> None:
        """The channel exists: CHANNEL_CREATE, and its application queue runs (early media too)."""
        self._player = self.host.spawn(self.player.run(), self.uuid)
        self.fire("CHANNEL_CREATE", [])

    def mark_answered(self) -> bool:
        if self.state != "ringing":
            return False
        self.state, self.answered_us = "answered", _now_us()
        self._t0 = time.monotonic()
        self.answered.set()
        self.fire("CHANNEL_ANSWER", [])
        self.fire("CHANNEL_PARK", [])
        self._clock = self.host.spawn(self._run_clock(), self.uuid)
        return True

    def answer_in_background(self) -> None:
        """``uuid_answer``: answered now; api_on_answer's stream connects while the reply goes out."""
        if self.mark_answered() and self.ws_url:
            stream = self.attach_stream(self.ws_url, self.mix_type, self.stream_rate, self.metadata)
            if stream is not None:
                self.host.spawn(stream.connect(), self.uuid)

    def attach_stream(self, url: str, mix_type: str, rate: int, metadata: str | None) -> AudioStream | None:
        """``uuid_audio_stream start``: None when a stream is attached already or the call is over."""
        if self.stream is not None or self.state == "hangup":
            return None
        self.stream = AudioStream(self, url, mix_type, rate, metadata, self.early_frames)
        return self.stream

    def stream_detached(self, stream: AudioStream) -> None:
        if self.stream is stream:
            self.stream = None

    async def stop_stream(self, text: str | None) -> bool:
        stream, self.stream = self.stream, None
        if stream is None:
            return False
        await stream.stop(text)
        return True

    def break_playback(self, flush: bool) -> None:
        self.breaks.append(time.monotonic())
        self.player.break_(flush)

    def transfer(self, destination: str) -> None:
        self.transferred_to = destination

    def sendmsg(self, packet: EslPacket) -> None:
        command = (packet.get("call-command") or "").lower()
        if command == "execute":
            arg = packet.get("execute-app-arg")
            if not arg and (packet.get("content-type") or "").lower() == "text/plain":
                arg = packet.body
            loops = packet.get("loops") or "1"
            self.player.execute(
                packet.get("execute-app-name") or "", arg or "", int(loops) if loops.isdigit() else 1
            )
        elif command == "hangup":
            self.begin_hangup(cause_name(packet.get("hangup-cause") or "NORMAL_CLEARING"))

    async def run_app(self, app: str, arg: str) -> str:
        """Dialplan applications other than playback, as far as a robot call needs them."""
        if app == "answer":
            await self.answer()
        elif app == "hangup":
            self.begin_hangup(cause_name(arg or "NORMAL_CLEARING"))
        elif app == "sleep" and arg.isdigit():
            await self.player.sleep(int(arg) / 1000)
        elif app == "set" and "=" in arg:
            name, _, value = arg.partition("=")
            self.variables[name] = value
        return "_none_"

    def begin_hangup(self, cause: str) -> bool:
        if self.state == "hangup":
            return False
        self.state, self.hangup_cause, self.hangup_us = "hangup", cause, _now_us()
        self.fire("CHANNEL_HANGUP", [("Hangup-Cause", cause)])
        self.player.stop_for_hangup()
        self.host.spawn(self._finish_hangup(), self.uuid)
        return True

    async def _finish_hangup(self) -> None:
        try:
            if self._player is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(self._player, 2.0)
            if self._clock is not None:
                self._clock.cancel()
            for path in list(self._records):
                self._finish_record(path)
            for _, future in self._waiters:
                if not future.done():
                    future.set_result(None)
            self._waiters.clear()
            stream, self.stream = self.stream, None
            if stream is not None:
                await stream.close_for_hangup()
            self.fire("CHANNEL_HANGUP_COMPLETE", [("Hangup-Cause", self.hangup_cause)])
            self.fire("CHANNEL_DESTROY", [])
        finally:
            self.ended.set()
            self.host.channel_ended(self)

    # ---- recording ------------------------------------------------------------------------------
    def record_start(self, path: str, limit_s: int) -> bool:
        if self.state == "hangup":
            return False
        try:  # FreeSWITCH opens the file at start: a path it cannot write fails here
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
        except OSError:
            return False
        record = _Recording(Path(path), self.media_index())
        self._records[path] = record
        self.fire("RECORD_START", [("Record-File-Path", path)])
        if limit_s > 0:
            record.timer = self.host.spawn(self._record_limit(path, limit_s), self.uuid)
        return True

    def record_stop(self, path: str) -> bool:
        paths = list(self._records) if path == "all" else [path] if path in self._records else []
        for each in paths:
            self._finish_record(each)
        return bool(paths)

    async def _record_limit(self, path: str, seconds: int) -> None:
        await asyncio.sleep(seconds)
        if path in self._records:
            self._finish_record(path)

    def _finish_record(self, path: str) -> None:
        record = self._records.pop(path)
        end = self.media_index()
        start_index, heard = self.player.playing_now()
        if heard:
            self.robot_track.write(start_index, heard)
        caller = self.caller_track.read(record.start, end)
        robot = self.robot_track.read(record.start, end)
        if self.host.record_stereo:
            data = wav_file(interleave(caller, robot), self.rate, channels=2)
        else:
            data = wav_file(mix(caller, robot), self.rate)
        try:
            record.path.write_bytes(data)
            self.recordings.append(record.path)
        except OSError:
            log.warning("fs_peer.record_write_failed", path=str(record.path))
        if record.timer is not None and record.timer is not asyncio.current_task():
            record.timer.cancel()
        if not self._records:
            self.caller_track, self.robot_track = Track(), Track()  # nothing needs the past any more
        self.fire("RECORD_STOP", [("Record-File-Path", path), ("Record-Completion-Cause", "success")])

    # ---- media clock ----------------------------------------------------------------------------
    async def _run_clock(self) -> None:
        while self.state == "answered":
            delay = self._t0 + self._k * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._media_lock:
                if self.state != "answered":
                    return
                await self._tick()

    async def _tick(self) -> None:
        size = self.rate // 50 * 2
        frame: bytes | None = bytes(self._caller_buf[:size])
        del self._caller_buf[:size]
        taken = len(frame or b"")
        self._consumed += taken
        if taken == 0 and not self.idle_silence:
            frame = None
        elif taken < size:
            frame = (frame or b"") + bytes(size - taken)
        index = self.media_index()
        due = self._t0 + self._k * 0.02
        self._k += 1
        if self._waiters:
            ready = [f for target, f in self._waiters if target <= self._consumed]
            self._waiters = [(t, f) for t, f in self._waiters if t > self._consumed]
            for future in ready:
                if not future.done():
                    future.set_result(None)
        if frame is None:
            return
        if self._records:
            self.caller_track.write(index, frame)
        stream = self.stream
        if stream is not None:
            robot = self.player.robot_audio(index, size // 2) if stream.mix_type != "mono" else b""
            sent_before = stream.frames_sent
            await stream.feed(frame, robot)
            if self.on_frame is not None and stream.frames_sent > sent_before:
                self.on_frame(due, time.monotonic())

    def channel_data(self) -> list[tuple[str, str]]:
        return channel_data(self)
