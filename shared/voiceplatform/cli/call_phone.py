"""`vp call --phone`: through gateway-fs, with the FreeSWITCH peer playing FreeSWITCH.

The peer (``voiceplatform_devstack``, the development stack) listens with its Event Socket on
``--esl-port`` (password ``VP_FS_ESL_PASSWORD``), waits for gateway-fs to log in, and places a call
whose mod_audio_stream WebSocket goes to gateway-fs (``--url``) with 8 kHz audio, as a real phone
call would. The report is the web mode's (``voiceplatform.cli.call``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid as uuid_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceplatform.audio import Int16Array
from voiceplatform.cli.call import PHONE_RATE, CallResult, print_report
from voiceplatform.cli.devstack import required_for
from voiceplatform.phone_stream import find_stream_secret, stream_url

if TYPE_CHECKING:
    from voiceplatform_devstack import PeerCall

GATEWAY_LOGIN_TIMEOUT_S = 15.0


class PhoneCallError(RuntimeError):
    pass


async def place_phone_call(
    url: str,
    robot: str,
    samples: Int16Array,
    *,
    esl_port: int,
    esl_password: str,
    stream_secret: str,
    number: str = "7000",
    tail_s: float = 20.0,
    login_timeout_s: float = GATEWAY_LOGIN_TIMEOUT_S,
    over_reply: tuple[Int16Array, float] | None = None,
) -> CallResult:
    """One phone call: ``samples`` at 8 kHz are the caller; gateway-fs must connect to our ESL.

    ``over_reply`` = (samples, delay_s): after ``samples``, wait until the robot's first reply has
    been playing for ``delay_s`` and then speak over it (a barge-in placed by what the caller
    hears, not by a clock, so it holds on a busy machine).
    """
    with required_for("vp call --phone (the FreeSWITCH peer)"):
        from voiceplatform_devstack import FreeSwitchPeer

    peer = FreeSwitchPeer(esl_password=esl_password, esl_port=esl_port)
    await peer.start()
    try:
        deadline = time.monotonic() + login_timeout_s
        while not any(c.line.startswith("event ") for c in peer.commands):
            if time.monotonic() > deadline:
                raise PhoneCallError(
                    f"gateway-fs did not log in to the Event Socket on port {peer.esl_port} within "
                    f"{login_timeout_s:.0f} s (is it running with VP_FS_ESL_PORT={peer.esl_port} and the "
                    "same VP_FS_ESL_PASSWORD?)"
                )
            await asyncio.sleep(0.05)
        uuid = str(uuid_module.uuid4())
        metadata = json.dumps({"robot": robot, "dnis": number, "caller": "vp-call", "rate": PHONE_RATE})
        t0 = time.monotonic()
        call = await peer.place_call(
            stream_url(url, uuid, stream_secret),
            destination=number,
            caller="vp-call",
            metadata=metadata,
            uuid=uuid,
        )
        tracker = _PhoneTracker(call, t0)
        watcher = asyncio.create_task(tracker.watch())
        try:
            pcm = samples.astype("<i2").tobytes()
            await call.stream_pcm(pcm)
            if over_reply is not None:
                await _until_reply_heard_for(call, tracker, over_reply[1], tail_s)
                await call.stream_pcm(over_reply[0].astype("<i2").tobytes())
            wav_end = time.monotonic()
            while not call.ended.is_set() and time.monotonic() < wav_end + tail_s:
                idle = tracker.robot_idle_for() > 1.0 and time.monotonic() - wav_end > 1.0
                if tracker.pending <= 0 and idle:
                    break
                await call.stream_silence(0.1)
            if not call.ended.is_set():
                await call.hangup()
        finally:
            tracker.poll()
            watcher.cancel()
        return tracker.result(call.heard())
    finally:
        await peer.stop()


async def _until_reply_heard_for(
    call: PeerCall, tracker: _PhoneTracker, delay_s: float, limit_s: float
) -> None:
    """Stream silence until a reply (not the greeting) has been playing for ``delay_s``."""
    deadline = time.monotonic() + limit_s
    playing_since: float | None = None
    while time.monotonic() < deadline and not call.ended.is_set():
        tracker.poll()
        replying = any(
            e.get("type") == "bot.sentence" and not str(e.get("turn_id", "")).endswith("-greeting")
            for e in tracker.events
        )
        # FreeSWITCH plays a reply as a queue of short files: a gap between two is still the reply
        if replying and tracker.robot_idle_for() < 0.25:
            playing_since = playing_since or time.monotonic()
            if time.monotonic() - playing_since >= delay_s:
                return
        else:
            playing_since = None  # a cut reply does not count: wait for one that keeps playing
        await call.stream_silence(0.02)


class _PhoneTracker:
    """Turns the peer's view of a call (text frames, playbacks, breaks) into a ``CallResult``."""

    def __init__(self, call: PeerCall, t0: float) -> None:
        self.call, self.t0 = call, t0
        self.events: list[dict[str, Any]] = []
        self.pending = 0
        self._seen = 0

    async def watch(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.02)

    def poll(self) -> None:
        new = self.call.events_text[self._seen :]
        self._seen += len(new)
        for event in new:
            if event.get("type") in (None, "streamAudio"):
                continue
            event = {**event, "t_s": round(time.monotonic() - self.t0, 3)}
            self.events.append(event)
            kind = event.get("type")
            if kind == "vad.speech_started":
                self.pending += 1
            elif (kind == "asr.final" and not str(event.get("text", "")).strip()) or kind == "turn.metrics":
                self.pending -= 1
            elif kind == "turn.cancelled" and event.get("reason") == "continued":
                reported = any(
                    e.get("type") == "turn.metrics" and e.get("turn_id") == event.get("turn_id")
                    for e in self.events
                )
                if not reported:
                    self.pending -= 1  # merged into a later utterance, answered there

    def robot_idle_for(self) -> float:
        plays = self.call.plays
        if any(p.started_at and not p.stopped_at for p in plays):
            return 0.0
        last = max((p.stopped_at or p.queued_at for p in plays), default=self.t0)
        return time.monotonic() - last

    def result(self, heard: bytes) -> CallResult:
        result = CallResult(events=self.events, robot_audio=bytearray(heard))
        for event in self.events:
            if event.get("type") == "call.started":
                result.call_id = str(event.get("call_id", ""))
            elif event.get("type") == "turn.metrics":
                result.turns.append(event)
            elif event.get("type") == "turn.cancelled" and event.get("reason") == "continued":
                result.continued.append(str(event.get("turn_id", "")))
            elif event.get("type") == "call.ended":
                result.end_reason = str(event.get("reason", ""))
        last_stop: float | None = None
        for started, stopped in sorted(
            ((p.started_at, p.stopped_at) for p in self.call.plays if p.started_at), key=lambda t: t[0]
        ):
            if last_stop is None or started - last_stop > 0.1:
                result.audio_starts.append(started - self.t0)
            last_stop = stopped or started
        if result.audio_starts:
            result.greeting_first_audio_s = result.audio_starts[0]
        result.flushes = [t - self.t0 for t in self.call.breaks]
        result.break_times = list(self.call.breaks)
        result.end_reason = result.end_reason or "caller_hangup"
        return result


def run_phone_call(args: argparse.Namespace, robot: str, samples: Int16Array) -> int:
    password = os.environ.get("VP_FS_ESL_PASSWORD", "")
    dev_file = Path(".vp") / "fs_esl_password"  # written by `vp up` for its gateway-fs
    if not password and dev_file.is_file():
        password = dev_file.read_text().strip()
    if not password:
        print("vp call --phone: set VP_FS_ESL_PASSWORD (the password gateway-fs uses)", file=sys.stderr)
        return 2
    stream_secret = find_stream_secret()  # VP_FS_STREAM_SECRET, else the one `vp up` generated
    if not stream_secret:
        print("vp call --phone: set VP_FS_STREAM_SECRET (the stream secret gateway-fs uses)", file=sys.stderr)
        return 2
    from voiceplatform.logging import configure_logging

    configure_logging("vp-call", "WARNING")  # the peer's log lines go to stderr, never into --json output
    try:
        result = asyncio.run(
            place_phone_call(
                args.url,
                robot,
                samples,
                esl_port=args.esl_port,
                esl_password=password,
                stream_secret=stream_secret,
                number=args.number,
                tail_s=args.tail_s,
            )
        )
    except PhoneCallError as exc:
        print(f"vp call --phone: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"vp call --phone: cannot listen on ESL port {args.esl_port}: {exc}", file=sys.stderr)
        return 1
    if not result.call_id:
        print(f"vp call --phone: gateway-fs at {args.url} did not take the call", file=sys.stderr)
        return 1
    return print_report(args, result, robot, samples, PHONE_RATE)
