"""`vp call`: stream a WAV into a robot in real time, collect the robot's replies and timings.

Web mode talks to gateway-web as a browser does. ``--phone`` plays FreeSWITCH instead
(``voiceplatform.cli.call_phone``). Both modes print the same report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voiceplatform.audio import Int16Array, frames, rms, write_wav

if TYPE_CHECKING:
    pass

RATE = 16000
PHONE_RATE = 8000  # --phone: what FreeSWITCH streams
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
        from voiceplatform.cli.call_phone import run_phone_call

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
