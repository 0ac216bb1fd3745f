"""`vp call`: stream a WAV into gateway-web in real time, collect the robot's replies and timings."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from voiceplatform.audio import Int16Array, frames, read_wav, resample, rms, write_wav

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
    end_reason: str = ""
    greeting_first_audio_s: float | None = None


async def place_call(url: str, robot: str, samples: Int16Array, tail_s: float = 20.0) -> CallResult:
    """Run one call; the caller's audio is paced at real time like a microphone."""
    result = CallResult()
    pending_utterances = 0
    last_audio_at = -1.0  # seconds into the call of the last robot frame; <0: none yet
    t0 = time.monotonic()
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "start", "robot": robot, "sample_rate": RATE, "caller": "vp-call"}))

        async def receive() -> None:
            nonlocal pending_utterances, last_audio_at
            async for message in ws:
                now = time.monotonic() - t0
                if isinstance(message, bytes):
                    if now - last_audio_at > 0.1:
                        result.audio_starts.append(now)
                        if result.greeting_first_audio_s is None:
                            result.greeting_first_audio_s = now
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
                elif kind == "playback.flush":
                    result.flushes.append(now)
                elif kind == "call.ended":
                    result.end_reason = event.get("reason", "")
                    return

        receiver = asyncio.create_task(receive())
        silence = np.zeros(FRAME, dtype=np.int16).tobytes()
        chunks = [f.tobytes() for f in frames(samples, FRAME)]
        start = time.monotonic()
        sent = 0
        for chunk in chunks:
            if receiver.done():
                break
            await ws.send(chunk)
            sent += 1
            delay = start + sent * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        # keep the line open (silence, like a real phone) until every utterance got its reply
        deadline = time.monotonic() + tail_s
        while not receiver.done() and time.monotonic() < deadline:
            idle = time.monotonic() - t0 - last_audio_at > 1.0
            if pending_utterances <= 0 and idle and result.turns is not None and sent > len(chunks) + 50:
                break
            await ws.send(silence)
            sent += 1
            delay = start + sent * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if not receiver.done():
            await ws.send(json.dumps({"type": "hangup"}))
            try:
                await asyncio.wait_for(receiver, 5.0)
            except TimeoutError:
                receiver.cancel()
    return result


def client_voice_to_voice(result: CallResult, samples: Int16Array) -> list[int | None]:
    """For each utterance end in the WAV, ms until the robot's audio next started at the client."""
    out: list[int | None] = []
    for end in speech_ends(samples):
        after = [s for s in result.audio_starts if s > end]
        out.append(int((after[0] - end) * 1000) if after else None)
    return out


def run_call(args: argparse.Namespace) -> int:
    samples, rate = read_wav(args.wav)
    samples = resample(samples, rate, RATE)
    robot = Path(args.robot).name
    try:
        result = asyncio.run(place_call(args.url, robot, samples, args.tail_s))
    except OSError as exc:
        print(f"cannot reach the gateway at {args.url}: {exc} (is `vp up` running?)", file=sys.stderr)
        return 1
    out = args.out or args.wav.with_suffix(".reply.wav")
    write_wav(out, np.frombuffer(bytes(result.robot_audio), dtype="<i2").astype(np.int16), RATE)
    v2v = client_voice_to_voice(result, samples)
    report = {
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
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    print(f"call {result.call_id} → robot {robot}; greeting after {report['greeting_first_audio_ms']} ms")
    for i, turn in enumerate(result.turns, 1):
        print(f"\nturn {i}{' (interrupted)' if turn.get('interrupted') else ''}")
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
    return 0
