"""One scripted conversation, played like a caller: through gateway-web's WebSocket (as a browser) or
through gateway-fs with the FreeSWITCH peer at 8 kHz (as a phone).

The caller's audio is paced at 20 ms frames and never stops (silence between utterances, like an open
microphone). After each utterance the caller waits for the robot's reply and for the robot to go quiet
(or a timeout); a backchannel is said ~0.8 s after the reply's first audio reached the caller.

Everything the client sees is logged with its arrival time (seconds since the call was placed): the
gateway's JSON events as they are (unknown event types are kept, never an error) and the arrival of
each robot audio frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from voiceplatform.audio import Int16Array
from voiceplatform.phone_stream import stream_url

BACKCHANNEL_DELAY_S = 0.8
ROBOT_QUIET_S = 1.2  # no robot audio for this long: the reply is over
GREETING_TIMEOUT_S = 8.0
REPLY_TIMEOUT_S = 15.0  # no reply audio this long after the caller's last word: a lost turn
TURN_CAP_S = 40.0
GAP_S = 0.4
PENDING_CAP_S = 5.0  # caller's own pause before the next utterance


@dataclass
class Played:
    """An utterance as played: times are seconds since the call was placed."""

    uid: str
    kind: str
    voice: str
    rate: int
    t_start: float
    t_voiced_start: float
    t_voiced_end: float
    t_second_start: float = 0.0  # pause utterances: the caller resumes speaking here
    t_end: float = 0.0
    parent: int = -1  # backchannel: index of the utterance whose reply it was said over


@dataclass
class CallLog:
    voice: str
    rate: int
    transport: str
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[float] = field(default_factory=list)  # arrival time of each robot audio frame
    played: list[Played] = field(default_factory=list)
    error: str = ""


class Transport(Protocol):
    log: CallLog

    def now(self) -> float: ...
    def ended(self) -> bool: ...
    async def play(self, samples: Int16Array) -> None: ...
    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool: ...


def audio_after(log: CallLog, t: float) -> float | None:
    return next((a for a in log.audio if a > t), None)


def pending_turns(log: CallLog) -> int:
    """Caller turns the gateway announced that have not ended (no metrics, no empty transcript,
    no cancel event)."""
    started: set[str] = set()
    done: set[str] = set()
    for e in log.events:
        kind, tid = str(e.get("type", "")), str(e.get("turn_id", ""))
        if kind == "vad.speech_started":
            started.add(tid)
        elif (
            kind == "turn.metrics"
            or "cancel" in kind
            or (kind == "asr.final" and not str(e.get("text", "")).strip())
        ):
            done.add(tid)
    return len(started - done)


def robot_quiet_for(tx: Transport) -> float:
    return tx.now() - (tx.log.audio[-1] if tx.log.audio else 0.0)


Item = tuple[str, Int16Array, Any, tuple[str, Int16Array, Any] | None]


async def run_script(tx: Transport, items: list[Item]) -> None:
    """``items``: (uid, samples, clip, backchannel) where clip has ``voiced_*_s``/``second_start_s``
    and kind, and backchannel is (uid, samples, clip) or None."""
    # the greeting: wait for it to start, then to finish
    await tx.wait_until(lambda: bool(tx.log.audio) or tx.ended(), GREETING_TIMEOUT_S)
    await tx.wait_until(lambda: tx.ended() or robot_quiet_for(tx) > ROBOT_QUIET_S, TURN_CAP_S)
    for item in items:
        if tx.ended():
            return
        await _utterance(tx, item)
    # the robot says goodbye and hangs up; otherwise the caller hangs up after a short while
    await tx.wait_until(tx.ended, 3.0)


def _played(uid: str, kind: str, clip: Any, t0: float, parent: int = -1) -> Played:
    second = t0 + clip.second_start_s if clip.second_start_s else 0.0
    return Played(
        uid,
        kind,
        clip.voice,
        clip.rate,
        t0,
        t0 + clip.voiced_start_s,
        t0 + clip.voiced_end_s,
        second,
        parent=parent,
    )


async def _utterance(tx: Transport, item: Item) -> None:
    """Say one utterance, wait for the reply (a backchannel over it), then for a quiet line."""
    uid, samples, clip, bc = item
    rec = _played(uid, clip.kind, clip, tx.now())
    tx.log.played.append(rec)
    index = len(tx.log.played) - 1
    await tx.play(samples)
    rec.t_end = tx.now()
    await tx.wait_until(
        lambda: tx.ended() or audio_after(tx.log, rec.t_voiced_end) is not None, REPLY_TIMEOUT_S
    )
    first = audio_after(tx.log, rec.t_voiced_end)
    if bc is not None and first is not None and not tx.ended():
        await tx.wait_until(lambda: tx.now() >= first + BACKCHANNEL_DELAY_S, 2.0)
        if robot_quiet_for(tx) < 0.2:  # only over the robot's speech; a finished reply is skipped
            b_uid, b_samples, b_clip = bc
            b_rec = _played(b_uid, "backchannel", b_clip, tx.now(), parent=index)
            tx.log.played.append(b_rec)
            await tx.play(b_samples)
            b_rec.t_end = tx.now()
    quiet_at: list[float] = []

    def settled() -> bool:
        quiet = robot_quiet_for(tx) > ROBOT_QUIET_S and tx.now() - rec.t_end > ROBOT_QUIET_S
        if not quiet:
            quiet_at.clear()
            return False
        quiet_at[:] = quiet_at or [tx.now()]
        # a caller turn still waiting for its reply (a split, a backchannel) may be answered late:
        # give it PENDING_CAP_S more so the next utterance is measured on a quiet line
        return not pending_turns(tx.log) or tx.now() - quiet_at[0] > PENDING_CAP_S

    await tx.wait_until(lambda: tx.ended() or settled(), TURN_CAP_S)
    await tx.wait_until(tx.ended, GAP_S)


class WebTransport:
    """A browser: binary 20 ms PCM frames up, robot PCM frames and JSON events down."""

    def __init__(self, url: str, robot: str, rate: int, voice: str) -> None:
        self.url, self.robot, self.rate = url, robot, rate
        self.log = CallLog(voice, rate, "web")
        self.frame = rate // 50
        self._ws: ClientConnection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._sent = 0
        self._ended = False

    def now(self) -> float:
        return time.monotonic() - self._t0

    def ended(self) -> bool:
        return self._ended

    async def __aenter__(self) -> WebTransport:
        from voiceplatform.cli.web_token import fetch_call_token  # gateway-web's call token

        token = await fetch_call_token(self.url, self.robot, os.environ.get("VP_WEB_API_KEY") or None)
        self._ws = await connect(self.url, max_size=2**22)
        self._t0 = time.monotonic()
        start = {
            "type": "start",
            "token": token,
            "robot": self.robot,
            "sample_rate": self.rate,
            "caller": "vp-bench",
        }
        await self._ws.send(json.dumps(start))
        self._receiver = asyncio.create_task(self._receive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._ws is not None and self._receiver is not None
        if not self._receiver.done():
            try:
                await self._ws.send(json.dumps({"type": "hangup"}))
                await asyncio.wait_for(asyncio.shield(self._receiver), 5.0)
            except Exception:  # the line may already be gone; the log has what we saw
                self._receiver.cancel()
        await self._ws.close()

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                now = self.now()
                if isinstance(message, bytes):
                    self.log.audio.append(now)
                    continue
                try:
                    event = json.loads(message)
                except ValueError:
                    event = {"type": "unparsed", "raw": str(message)[:200]}
                if not isinstance(event, dict):
                    event = {"type": "unparsed", "raw": str(message)[:200]}
                event["t"] = round(now, 3)
                self.log.events.append(event)
                if event.get("type") == "call.ended":
                    break
        except Exception as exc:  # a dropped socket ends the call; record why
            self.log.error = f"{type(exc).__name__}: {exc}"
        self._ended = True

    async def _send(self, frame: bytes) -> None:
        assert self._ws is not None
        if self._ended:
            return
        try:
            await self._ws.send(frame)
        except Exception:  # the gateway closed the call
            self._ended = True
            return
        self._sent += 1
        delay = self._t0 + self._sent * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.2:  # fell behind (a stall): do not burst to catch up
            self._sent = int((time.monotonic() - self._t0) / 0.02)

    async def play(self, samples: Int16Array) -> None:
        pcm = samples.astype("<i2")
        for i in range(0, len(pcm), self.frame):
            chunk = pcm[i : i + self.frame]
            if len(chunk) < self.frame:
                chunk = np.concatenate([chunk, np.zeros(self.frame - len(chunk), "<i2")])
            await self._send(chunk.tobytes())

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        silence = bytes(self.frame * 2)
        deadline = self.now() + timeout
        while not done():
            if self.now() >= deadline or self._ended:
                return done()
            await self._send(silence)
        return True


class PhoneTransport:
    """A phone call through gateway-fs: the FreeSWITCH peer is the switch, the call runs at 8 kHz.

    Robot audio is what the peer played to the caller (playback start/stop), expanded to 20 ms frames.
    """

    RATE = 8000

    def __init__(
        self, peer: Any, url: str, robot: str, voice: str, number: str = "7000", *, secret: str
    ) -> None:
        self.peer, self.url, self.robot, self.number = peer, url, robot, number
        self.secret = secret  # VP_FS_STREAM_SECRET: the key the dialplan puts in the stream URL
        self.log = CallLog(voice, self.RATE, "phone")
        self.call: Any = None
        self._t0 = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._seen = 0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def ended(self) -> bool:
        return self.call is None or self.call.ended.is_set()

    async def __aenter__(self) -> PhoneTransport:
        uuid = str(uuid_module.uuid4())
        metadata = json.dumps(
            {"robot": self.robot, "dnis": self.number, "caller": "vp-bench", "rate": self.RATE}
        )
        self._t0 = time.monotonic()
        self.call = await self.peer.place_call(
            stream_url(self.url, uuid, self.secret),
            destination=self.number,
            caller="vp-bench",
            metadata=metadata,
            uuid=uuid,
        )
        self._poller = asyncio.create_task(self._poll_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.call is not None and not self.call.ended.is_set():
            await self.call.hangup()
        self._poll()
        if self._poller is not None:
            self._poller.cancel()
        self._refresh_audio()

    async def _poll_loop(self) -> None:
        while True:
            self._poll()
            self._refresh_audio()
            await asyncio.sleep(0.02)

    def _poll(self) -> None:
        new = self.call.events_text[self._seen :]
        self._seen += len(new)
        for event in new:
            if isinstance(event, dict) and event.get("type") not in (None, "streamAudio"):
                self.log.events.append({**event, "t": round(self.now(), 3)})

    def _refresh_audio(self) -> None:
        frames: list[float] = []
        now = time.monotonic()
        for play in self.call.plays:
            if play.started_at is None:
                continue
            stop = play.stopped_at or now
            frames += list(np.arange(play.started_at, stop, 0.02) - self._t0)
        self.log.audio = sorted(float(f) for f in frames)

    async def play(self, samples: Int16Array) -> None:
        if not self.ended():
            await self.call.stream_pcm(samples.astype("<i2").tobytes())

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = self.now() + timeout
        while not done():
            if self.now() >= deadline or self.ended():
                return done()
            await self.call.stream_silence(0.02)
            self._refresh_audio()
        return True


def new_call_id() -> str:
    return uuid_module.uuid4().hex
