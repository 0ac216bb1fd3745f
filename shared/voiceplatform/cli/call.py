"""`vp call`: stream a WAV into a robot in real time, collect the robot's replies and timings.

Web mode talks to gateway-web as a browser does. ``--phone`` plays FreeSWITCH instead: it starts the
FreeSWITCH peer (``voiceplatform_devstack``, the development stack) with its Event Socket on
``--esl-port`` (password ``VP_FS_ESL_PASSWORD``), waits for gateway-fs to log in, and places a call
whose mod_audio_stream WebSocket goes to gateway-fs (``--url``) with 8 kHz audio, as a real phone
call would. Both modes print the same report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voiceplatform.audio import Int16Array, frames, rms, write_wav
from voiceplatform.cli.devstack import required_for
from voiceplatform.phone_stream import find_stream_secret, stream_url

if TYPE_CHECKING:
    from voiceplatform_devstack import PeerCall

RATE = 16000
FRAME = RATE // 50
SPEECH_RMS = 300.0
SILENCE_END_S = 0.6  # longer than the VAD hang-over (0.5 s), so a comma pause does not split a phrase


def speech_ends(samples: Int16Array, rate: int = RATE) -> list[float]:
    """Seconds at which caller speech segments end in the WAV (energy, 600 ms of silence closes one)."""
    ends: list[float] = []
    in_speech = False
    last_voiced = 0.0
    for i, frame in enumerate(frames(samples, rate // 50)):
        t = (i + 1) * 0.02
        if rms(frame) > SPEECH_RMS:
            in_speech, last_voiced = True, t
        elif in_speech and t - last_voiced >= SILENCE_END_S:
            ends.append(last_voiced)
            in_speech = False
    if in_speech:
        ends.append(last_voiced)
    return ends


@dataclass
class CallResult:
    call_id: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    robot_audio: bytearray = field(default_factory=bytearray)
    audio_starts: list[float] = field(default_factory=list)  # robot audio (re)starts, seconds into call
    flushes: list[float] = field(default_factory=list)
    break_times: list[float] = field(default_factory=list)  # phone: uuid_break arrivals, monotonic
    end_reason: str = ""
    greeting_first_audio_s: float | None = None
    continued: list[str] = field(default_factory=list)  # turns merged into a later utterance
    refused: str = ""  # the gateway did not take the call: its close reason (busy, token …)
    close_code: int | None = None


async def place_call(
    url: str,
    robot: str,
    samples: Int16Array,
    tail_s: float = 20.0,
    over_reply: tuple[Int16Array, float] | None = None,
    api_key: str | None = None,
) -> CallResult:
    """Run one call; the caller's audio is paced at real time like a microphone.

    The call token comes from ``POST /tokens`` with ``api_key`` (default ``VP_WEB_API_KEY``), else
    from ``POST /page-token`` as the bundled page gets it. A refused call (busy, …) returns with
    ``refused`` and ``close_code`` set.

    ``over_reply`` = (samples, delay_s): after ``samples``, wait until the robot's first reply has
    been heard for ``delay_s`` and then speak over it (placed by what the caller hears, not by a
    clock, so a barge-in stays a barge-in on a busy machine).
    """
    result = CallResult()
    pending_utterances = 0
    last_audio_at = -1.0  # seconds into the call of the last robot frame; <0: none yet
    reply_audio_since = -1.0  # seconds into the call when a reply (not the greeting) began to play
    from voiceplatform.cli.web_token import fetch_call_token

    token = await fetch_call_token(url, robot, api_key or os.environ.get("VP_WEB_API_KEY") or None)
    t0 = time.monotonic()
    async with connect(url, max_size=2**22) as ws:
        hello = {"type": "start", "token": token, "robot": robot, "sample_rate": RATE, "caller": "vp-call"}
        await ws.send(json.dumps(hello))

        async def receive() -> None:
            with contextlib.suppress(ConnectionClosed):
                await receive_events()
            if result.call_id == "":  # closed before the call started: refused
                result.close_code, result.refused = ws.close_code, ws.close_reason or "refused"

        async def receive_events() -> None:
            nonlocal pending_utterances, last_audio_at, reply_audio_since
            replying = False
            async for message in ws:
                now = time.monotonic() - t0
                if isinstance(message, bytes):
                    if now - last_audio_at > 0.1:
                        result.audio_starts.append(now)
                        if result.greeting_first_audio_s is None:
                            result.greeting_first_audio_s = now
                        reply_audio_since = now if replying else -1.0  # playing without a break since
                    last_audio_at = now
                    result.robot_audio += message
                    continue
                event = json.loads(message)
                event["t_s"] = round(now, 3)
                result.events.append(event)
                kind = event.get("type")
                if kind == "call.started":
                    result.call_id = event.get("call_id", "")
                elif kind == "vad.speech_started":
                    pending_utterances += 1
                elif kind == "asr.final" and not event.get("text", "").strip():
                    pending_utterances -= 1
                elif kind == "turn.metrics":
                    pending_utterances -= 1
                    result.turns.append(event)
                elif kind == "turn.cancelled" and event.get("reason") == "continued":
                    result.continued.append(str(event.get("turn_id", "")))
                    if not any(t.get("turn_id") == event.get("turn_id") for t in result.turns):
                        pending_utterances -= 1  # merged into a later utterance, answered there
                elif kind == "bot.sentence" and not str(event.get("turn_id", "")).endswith("-greeting"):
                    replying = True
                elif kind == "playback.flush":
                    result.flushes.append(now)
                elif kind == "call.ended":
                    result.end_reason = event.get("reason", "")
                    return

        receiver = asyncio.create_task(receive())
        silence = np.zeros(FRAME, dtype=np.int16).tobytes()
        start = time.monotonic()
        sent = 0

        async def send(chunk: bytes) -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionClosed):  # the receiver sees why it closed
                await ws.send(chunk)
            sent += 1
            delay = start + sent * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

        chunks = [f.tobytes() for f in frames(samples, FRAME)]
        for chunk in chunks:
            if receiver.done():
                break
            await send(chunk)
        if over_reply is not None:
            deadline = time.monotonic() + tail_s
            while not receiver.done() and time.monotonic() < deadline:
                now = time.monotonic() - t0
                playing = now - last_audio_at < 0.1
                if playing and reply_audio_since >= 0 and now - reply_audio_since >= over_reply[1]:
                    break
                await send(silence)
            for frame in frames(over_reply[0], FRAME):
                if receiver.done():
                    break
                await send(frame.tobytes())
        # keep the line open (silence, like a real phone) until every utterance got its reply
        deadline = time.monotonic() + tail_s
        spoken = sent
        while not receiver.done() and time.monotonic() < deadline:
            idle = time.monotonic() - t0 - last_audio_at > 1.0
            if pending_utterances <= 0 and idle and sent > spoken + 50:
                break
            await send(silence)
        if not receiver.done():
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"type": "hangup"}))
            try:
                await asyncio.wait_for(receiver, 5.0)
            except TimeoutError:
                receiver.cancel()
    return result


def client_voice_to_voice(result: CallResult, samples: Int16Array, rate: int = RATE) -> list[int | None]:
    """For each utterance end in the WAV, ms until the robot's audio next started at the client."""
    out: list[int | None] = []
    for end in speech_ends(samples, rate):
        after = [s for s in result.audio_starts if s > end]
        out.append(int((after[0] - end) * 1000) if after else None)
    return out


def call_failures(result: CallResult, samples: Int16Array, rate: int) -> list[str]:
    """Why the call did not do what a caller expects, one line each: the platform's stage errors
    (kind and detail), turns that ended without a reply, caller speech nobody answered."""
    failures = [  # each cause once: a re-assigned stage may report it again
        f"turn {e.get('turn_id') or '-'}: {e.get('stage', '?')} error {e.get('kind', '?')}: "
        f"{e.get('detail') or '(no detail)'}"
        for e in result.events
        if e.get("type") == "error" and e.get("stage")
    ]
    failures = list(dict.fromkeys(failures))
    replies = 0
    for turn in result.turns:
        turn_id = str(turn.get("turn_id", ""))
        if turn_id.endswith("-greeting"):
            continue
        outcome = turn.get("outcome") or "played"
        if outcome in ("no_reply", "fallback") or (outcome == "played" and not turn.get("bot_text")):
            failures.append(
                f"turn {turn_id}: no reply (outcome {outcome}; caller said {turn.get('user_text')!r})"
            )
        else:
            replies += 1
    utterances = len(speech_ends(samples, rate))
    if utterances and not replies and not failures:
        failures.append(f"no reply: the caller spoke {utterances} time(s), the robot answered none")
    return failures


def run_call(args: argparse.Namespace) -> int:
    from voiceplatform.audio_files import AudioFileError, load_audio
    from voiceplatform.cli.authoring import callable_robot

    robot, problems = callable_robot(args.robot, phone=getattr(args, "phone", False))
    if problems:
        for line in problems:
            print(f"vp call: {line}", file=sys.stderr)
        return 2
    try:
        samples = load_audio(args.wav, PHONE_RATE if getattr(args, "phone", False) else RATE)
    except AudioFileError as exc:
        print(f"vp call: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "phone", False):
        return run_phone_call(args, robot, samples)
    from voiceplatform.cli.web_token import CallTokenError, local_api_key

    try:
        result = asyncio.run(place_call(args.url, robot, samples, args.tail_s, api_key=local_api_key()))
    except (OSError, httpx.HTTPError) as exc:
        print(f"cannot reach the gateway at {args.url}: {exc} (is `vp up` running?)", file=sys.stderr)
        return 1
    except CallTokenError as exc:
        print(f"vp call: no call token for robot {robot!r}: {exc}", file=sys.stderr)
        return 1
    if result.refused:
        message = next((str(e.get("message", "")) for e in result.events if e.get("message")), "")
        print(f"vp call: the gateway refused the call ({result.refused}): {message}", file=sys.stderr)
        return 1
    return print_report(args, result, robot, samples, RATE)


def print_report(
    args: argparse.Namespace, result: CallResult, robot: str, samples: Int16Array, rate: int
) -> int:
    """Save the robot's audio and print the per-turn report (text, or JSON with ``--json``)."""
    out = args.out or args.wav.with_suffix(".reply.wav")
    write_wav(out, np.frombuffer(bytes(result.robot_audio), dtype="<i2").astype(np.int16), rate)
    v2v = client_voice_to_voice(result, samples, rate)
    failures = call_failures(result, samples, rate)
    report: dict[str, Any] = {
        "call_id": result.call_id,
        "robot": robot,
        "end_reason": result.end_reason,
        "greeting_first_audio_ms": int(result.greeting_first_audio_s * 1000)
        if result.greeting_first_audio_s is not None
        else None,
        "barge_ins": len(result.flushes),
        "reply_wav": str(out),
        "turns": result.turns,
        "client_voice_to_voice_ms": v2v,
        "failures": failures,
    }
    status = 1 if failures else 0
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return status
    print(f"call {result.call_id} → robot {robot}; greeting after {report['greeting_first_audio_ms']} ms")
    for i, turn in enumerate(result.turns, 1):
        outcome = turn.get("outcome") or ("cut" if turn.get("interrupted") else "played")
        print(f"\nturn {i}{'' if outcome == 'played' else f' ({outcome})'}")
        print(f"  caller: {turn.get('user_text', '')}")
        print(f"  robot:  {turn.get('played_text') if turn.get('interrupted') else turn.get('bot_text', '')}")
        print(
            "  speech end → ASR final {asr_ms} ms, → first LLM sentence {llm_first_sentence_ms} ms, "
            "→ first TTS audio {tts_first_audio_ms} ms, → first audio sent (voice-to-voice) "
            "{voice_to_voice_ms} ms".format(
                **{
                    k: turn.get(k)
                    for k in ("asr_ms", "llm_first_sentence_ms", "tts_first_audio_ms", "voice_to_voice_ms")
                }
            )
        )
    print(f"\nclient-measured voice-to-voice per utterance (incl. VAD hang-over): {v2v} ms")
    print(f"robot audio saved to {out}; call ended: {result.end_reason or 'by caller'}")
    for line in failures:
        print(f"vp call: {line}", file=sys.stderr)
    return status


# ---- --phone: through gateway-fs, with the FreeSWITCH peer playing FreeSWITCH --------------------
PHONE_RATE = 8000
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
