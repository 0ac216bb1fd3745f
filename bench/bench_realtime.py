"""Realtime mode: what the platform adds around a speech-to-speech provider, and barge-in speed.

The provider is the protocol stand-in (tests/stand_ins/realtime_server.py) answering at once
(``pace=0``), so the figures are the platform's own time: the realtime session (JSON, base64,
resampling 24 kHz → call rate, msgpack) plus the bus and the gateway. In-memory bus, one process.

- reply: caller speech end (the provider's ``speech_stopped`` as published) → first reply audio
  published on the bus, and → first frame sent to the caller by the gateway;
- barge-in: the caller's new speech start (published) → ``conversation.item.truncate`` received by
  the provider.

    .venv/bin/python bench/bench_realtime.py [--calls 10] [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.realtime.test_realtime_call import Call, make_robot
from tests.stand_ins.realtime_server import RealtimeStandIn
from tests.stand_ins.realtime_vad import Truncation
from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.wire import TtsAudio, VadSpeechEnded, VadSpeechStarted
from vp_realtime.app import RealtimeService
from vp_realtime.settings import RealtimeSettings

RATE = 16000


def speech(seconds: float) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * 300 * t) * 4000).astype(np.int16).tobytes()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<44} n={len(values):<4} p50={pct(values, 50):7.1f}  p95={pct(values, 95):7.1f}  "
        f"p99={pct(values, 99):7.1f}  max={max(values, default=float('nan')):7.1f} ms"
    )


async def one_call(
    broker: MemoryBroker,
    robot: Path,
    server: RealtimeStandIn,
    service: RealtimeService,
    turns: int,
    out: dict,
) -> None:
    call = Call(broker, robot)
    ends: dict[str, float] = {}
    first_audio: dict[str, float] = {}
    starts: list[float] = []

    async def watch(env: Envelope) -> None:
        msg, now = env.message, time.monotonic()
        if msg.call_id != call.session.call_id:
            return
        if isinstance(msg, VadSpeechEnded):
            ends[msg.turn_id] = now
        elif isinstance(msg, VadSpeechStarted):
            starts.append(now)
        elif isinstance(msg, TtsAudio) and msg.pcm:
            first_audio.setdefault(msg.turn_id, now)

    await broker.bus("bench").subscribe(subjects.ALL_CALLS, watch)
    await call.start()
    while call.session.owners.get("realtime") is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the provider session opens
    for _ in range(turns):
        frames_before = len(call.sink.audio)
        await call.say(speech(0.5) + b"\0" * RATE)
        while len(call.sink.audio) == frames_before:
            await asyncio.sleep(0.001)
        first_frame = call.sink.audio[frames_before][0]
        turn = max(ends, key=lambda t: ends[t])
        out["reply_bus"].append((first_audio[turn] - ends[turn]) * 1000)
        out["reply_frame"].append((first_frame - ends[turn]) * 1000)
        await asyncio.sleep(0.3)  # the robot talks; the caller talks over it
        before = len(_cuts(server, service, call))
        await call.say(speech(0.3))
        while len(_cuts(server, service, call)) == before:
            await asyncio.sleep(0.001)
        cut = _cuts(server, service, call)[-1]
        out["barge_in"].append((cut.at - starts[-1]) * 1000)
        await call.say(b"\0" * RATE)  # the interrupting utterance ends and is answered
        await asyncio.sleep(2.5)
    await call.session.end("bench")


def _cuts(server: RealtimeStandIn, service: RealtimeService, call: Call) -> list[Truncation]:
    """The truncations the provider received for this call's replies."""
    session = service.sessions.get(call.session.call_id)
    items = {r.item_id for r in session._replies.values()} if session is not None else set()
    return [t for t in server.truncations if t.item_id in items]


async def main(args: argparse.Namespace) -> None:
    out: dict[str, list[float]] = {"reply_bus": [], "reply_frame": [], "barge_in": []}
    broker = MemoryBroker()
    with tempfile.TemporaryDirectory() as tmp:
        async with RealtimeStandIn(flavor="yandex", reply_audio_s=2.0, pace=1.0) as server:
            folder = make_robot(Path(tmp), server)
            service = RealtimeService(RealtimeSettings(robots_dir=folder.parent, instance_id="bench"))
            await service.start(broker.bus("realtime"))
            started = time.perf_counter()
            cpu0 = time.process_time()
            await asyncio.gather(
                *(one_call(broker, folder, server, service, args.turns, out) for _ in range(args.calls))
            )
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
            await service.drain(2)
    print(
        f"realtime bench: {args.calls} concurrent calls × {args.turns} turns,"
        " in-memory bus, stand-in provider"
    )
    print(line("speech end → first reply audio on the bus", out["reply_bus"]))
    print(line("speech end → first frame to the caller", out["reply_frame"]))
    print(line("caller speech start → provider truncate", out["barge_in"]))
    print(f"CPU {cpu:.1f} s over {wall:.1f} s wall ({cpu / wall * 100:.0f}% of one core, stand-in included)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    asyncio.run(main(parser.parse_args()))
