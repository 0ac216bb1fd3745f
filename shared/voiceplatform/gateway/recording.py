"""Every call as one stereo WAV: the caller on the left channel, the robot on the right, aligned by time.

Both gateways write it the same way through ``CallSession`` (``recordings_dir``): the session hands
each caller frame to ``caller`` as it arrives and wraps its sink in ``RecordingSink``, so a robot
frame is placed when the gateway plays it out and a flush (barge-in, pause) removes what had been
sent ahead but not heard. Silence fills the rest. Positions are wall-clock samples since the call
began: caller frames follow one another (they are paced by the caller), and a caller gap longer
than ``late_s`` (a dropped socket) is left silent instead of pulling later speech forward. For a
phone call the sink knows better (``HeardAudio``: FreeSWITCH reports when each file of robot audio
starts playing), so there the robot audio is placed when the caller started hearing it, and
nothing of it after the hangup.

The file is written as the call goes (``<dir>/<YYYY-MM-DD>/<call_id>.wav.part``), keeping only the
last ``late_s`` in memory, and renamed to ``.wav`` when the call ends; the session publishes
``call.recording`` (``start`` with the final path, ``stop`` with the duration) on the call's
lifecycle subject, and the recorder keeps it with the call (docs/call_events.md).
"""

from __future__ import annotations

import contextlib
import time
import wave
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import structlog
from prometheus_client import Counter

from voiceplatform.config import RobotConfig
from voiceplatform.wire import CallRecording

log = structlog.get_logger("voiceplatform.gateway.recording")

FORMAT = "wav"
CHANNELS = 2  # left: caller, right: robot
SAMPLE_BYTES = 2
PART_SUFFIX = ".part"
# caller audio that arrives later than this behind the wall clock starts at the wall clock
LATE_S = 1.0
# heard audio that starts this close to the end of the previous piece follows it without a gap
CONTIGUOUS_S = 0.06
CALLER, ROBOT = 0, 1  # the tracks, in the file's channel order

RECORDINGS = Counter("vp_gateway_recordings_total", "Call recordings (stereo WAV) by outcome", ["outcome"])


@runtime_checkable
class HeardAudio(Protocol):
    """A sink that learns when the caller hears the robot audio it was given (gateway-fs: a file's
    ``PLAYBACK_START``). It calls ``heard(pcm, at)`` when ``pcm`` starts being heard at ``at``
    (``time.monotonic``), and ``unheard_after(at)`` when nothing given is heard after ``at`` (the
    caller hung up)."""

    def report_heard(
        self, heard: Callable[[bytes, float], None], unheard_after: Callable[[float], None]
    ) -> None: ...


class _Sink(Protocol):
    async def send_audio(self, pcm: bytes) -> None: ...
    async def send_event(self, event: dict[str, Any]) -> None: ...
    async def flush(self, turn_id: str) -> None: ...
    async def close(self, reason: str) -> None: ...


def recording_path(recordings_dir: Path, call_id: str, started: datetime | None = None) -> Path:
    """Where a call's recording goes: one folder per UTC day, the call id as the name."""
    day = (started or datetime.now(UTC)).strftime("%Y-%m-%d")
    return recordings_dir.resolve() / day / f"{call_id}.{FORMAT}"


class StereoRecording:
    """One call's stereo WAV, written while the call goes on (see the module's docstring)."""

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        clock: Callable[[], float] = time.monotonic,
        late_s: float = LATE_S,
    ) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self._clock = clock
        self._t0 = clock()
        self._late = int(late_s * sample_rate)
        self._contiguous = int(CONTIGUOUS_S * sample_rate)
        self._part = path.with_name(path.name + PART_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wav: wave.Wave_write | None = wave.open(str(self._part), "wb")  # noqa: SIM115
        self._wav.setnchannels(CHANNELS)
        self._wav.setsampwidth(SAMPLE_BYTES)
        self._wav.setframerate(sample_rate)
        self._base = 0  # samples already on disk
        # each track's PCM from _base on, mono: a caller frame that follows the last one (every frame
        # but after a gap) is one append; the two are interleaved only when written, once a second.
        # A track shorter than the other is silence up to the other's end.
        self._tracks = (bytearray(), bytearray())
        self._caller_end = 0
        self._robot_end = 0
        self.dropped_samples = 0  # audio that came after its place had been written (counted, logged)
        self.duration_ms = 0

    @property
    def closed(self) -> bool:
        return self._wav is None

    def _now(self) -> int:
        return round((self._clock() - self._t0) * self.sample_rate)

    @property
    def _rows(self) -> int:
        """Samples held from _base on (the longer track's)."""
        return max(len(self._tracks[CALLER]), len(self._tracks[ROBOT])) // SAMPLE_BYTES

    def _put(self, track: int, pos: int, pcm: bytes) -> int:
        size = len(pcm) - len(pcm) % SAMPLE_BYTES
        end = pos + size // SAMPLE_BYTES
        data: bytes | memoryview = pcm if size == len(pcm) else memoryview(pcm)[:size]
        if pos < self._base:  # its place is on disk already
            cut = min(self._base - pos, end - pos)
            self.dropped_samples += cut
            data, pos = memoryview(pcm)[cut * SAMPLE_BYTES : size], pos + cut
        if not len(data):
            return end
        buf = self._tracks[track]
        at = (pos - self._base) * SAMPLE_BYTES
        if at > len(buf):
            buf.extend(bytes(at - len(buf)))  # silence until this piece
        if at == len(buf):
            buf += data
        else:
            buf[at : at + len(data)] = data  # over what was there (or past its end: grows)
        return end

    def caller(self, pcm: bytes) -> None:
        """One frame of the caller's audio, as it arrived."""
        if self._wav is None:
            return
        now = self._now()
        n = len(pcm) // SAMPLE_BYTES
        pos = self._caller_end
        if pos < now - n - self._late:
            pos = now - n  # after a gap: the frame is recent, not the continuation of old speech
        self._caller_end = self._put(CALLER, pos, pcm)
        self._write_settled(now)

    def robot(self, pcm: bytes) -> None:
        """Robot audio the gateway plays now (after what it has sent before)."""
        if self._wav is None:
            return
        now = self._now()
        self._robot_end = self._put(ROBOT, max(self._robot_end, now), pcm)
        self._write_settled(now)  # also while the caller sends nothing (a dropped socket)

    def robot_heard(self, pcm: bytes, at: float) -> None:
        """Robot audio the caller started hearing at ``at`` (this recording's clock)."""
        if self._wav is None:
            return
        pos = max(0, round((at - self._t0) * self.sample_rate))
        if abs(pos - self._robot_end) <= self._contiguous:
            pos = self._robot_end  # played back to back: the event's jitter would click
        self._robot_end = max(self._robot_end, self._put(ROBOT, pos, pcm))
        self._write_settled(self._now())

    def clear_robot(self, at: float | None = None) -> None:
        """The caller's side dropped what it had not played yet (barge-in, hangup): silence from
        now (or from ``at``, this recording's clock) on."""
        now = self._now() if at is None else round((at - self._t0) * self.sample_rate)
        now = max(now, self._base)
        if self._robot_end > now:
            robot = self._tracks[ROBOT]
            start = (now - self._base) * SAMPLE_BYTES
            stop = min((self._robot_end - self._base) * SAMPLE_BYTES, len(robot))
            robot[start:stop] = bytes(max(0, stop - start))
            self._robot_end = now

    def _write_settled(self, now: int) -> None:
        # audio older than the late window (and a frame or more) cannot change any more; written in
        # steps of a second
        settled = now - self._late - self.sample_rate // 5 - self._base
        if settled >= self.sample_rate and self._rows >= settled:
            self._write(settled)

    def _write(self, count: int) -> None:
        """The first ``count`` samples of both tracks to the file, interleaved (silence where a track
        is shorter), and out of memory."""
        assert self._wav is not None
        frames = np.zeros((count, CHANNELS), dtype="<i2")
        for column, buf in enumerate(self._tracks):
            have = min(count, len(buf) // SAMPLE_BYTES)
            frames[:have, column] = np.frombuffer(buf, dtype="<i2", count=have)
            del buf[: have * SAMPLE_BYTES]  # the view above is gone: the buffer may shrink
        self._wav.writeframes(frames.tobytes())
        self._base += count

    def close(self) -> int:
        """Write the rest and move the file to its final name; returns the duration in ms."""
        if self._wav is None:
            return self.duration_ms
        end = max(self._caller_end, self._robot_end, self._base)
        try:
            if end > self._base:
                self._write(end - self._base)
            self._wav.close()
            self._part.replace(self.path)
        finally:
            self._wav = None
        self.duration_ms = end * 1000 // self.sample_rate
        if self.dropped_samples:
            log.warning("recording.late_audio_dropped", path=str(self.path), samples=self.dropped_samples)
        return self.duration_ms

    def abandon(self) -> None:
        """Close without keeping a file (the call could not start)."""
        if self._wav is not None:
            with contextlib.suppress(Exception):
                self._wav.close()
            self._wav = None
            self._part.unlink(missing_ok=True)


def open_recording(
    recordings_dir: Path | None, robot: RobotConfig, call_id: str, sample_rate: int
) -> StereoRecording | None:
    """The call's recording, or None: no recordings dir, the robot's ``recording.calls`` is off, or
    the file cannot be made (logged and counted; the call goes on unrecorded)."""
    if recordings_dir is None or not robot.settings.recording.calls:
        return None
    path = recording_path(recordings_dir, call_id)
    try:
        recording = StereoRecording(path, sample_rate)
    except OSError as exc:
        RECORDINGS.labels("open_failed").inc()
        log.error("recording.open_failed", call_id=call_id, path=str(path), error=type(exc).__name__)
        return None
    RECORDINGS.labels("started").inc()
    return recording


def recording_event(call_id: str, recording: StereoRecording) -> CallRecording:
    """``call.recording``: ``start`` while the file is open, ``stop`` with its duration once closed."""
    closed = recording.closed
    return CallRecording(
        call_id=call_id,
        action="stop" if closed else "start",
        path=str(recording.path),
        format=FORMAT,
        channels=CHANNELS,
        duration_ms=recording.duration_ms if closed else None,
    )


def close_recording(call_id: str, recording: StereoRecording) -> bool:
    """Close the call's file; False (logged, counted) when it could not be written."""
    try:
        recording.close()
    except OSError as exc:
        RECORDINGS.labels("write_failed").inc()
        log.error(
            "recording.write_failed", call_id=call_id, path=str(recording.path), error=type(exc).__name__
        )
        return False
    RECORDINGS.labels("saved").inc()
    return True


class RecordingSink:
    """A call's sink that also puts the robot audio it plays into the recording: when it is sent,
    or, from a sink that knows (``HeardAudio``), when the caller starts hearing it."""

    def __init__(self, inner: _Sink, recording: StereoRecording) -> None:
        self.inner = inner
        self.recording = recording
        self._placed_when_sent = not isinstance(inner, HeardAudio)
        if isinstance(inner, HeardAudio):
            inner.report_heard(recording.robot_heard, recording.clear_robot)

    async def send_audio(self, pcm: bytes) -> None:
        if self._placed_when_sent:
            self.recording.robot(pcm)
        await self.inner.send_audio(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.inner.send_event(event)

    async def flush(self, turn_id: str) -> None:
        self.recording.clear_robot()
        await self.inner.flush(turn_id)

    async def close(self, reason: str) -> None:
        await self.inner.close(reason)

    def __getattr__(self, name: str) -> Any:
        # a gateway's own sink methods (gateway-fs: hangup, wait_drained, ...) stay reachable
        return getattr(self.inner, name)
