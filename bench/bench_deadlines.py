"""Stage deadlines at the gateway: how late the fallback line starts, and what the watcher costs.

Gateway ``CallSession`` objects on the in-memory bus (no workers: the test side publishes the
caller's turn and never answers, like a hung LLM). Per level of concurrent calls it reports
- ``late``: first fallback frame at the sink minus the moment the deadline passed (asr.final
  handled + ``reply_ms``), p50/p95/max: the watcher's period plus the playout's start;
- ``cpu``: process CPU per call-second while the calls sit idle with deadlines on, and off (the
  watcher wakes every 100 ms per call).

    .venv/bin/python bench/bench_deadlines.py [--levels 1 20 100] [--turns 5] [--idle-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotConfig, load_robot
from voiceplatform.gateway import CallSession
from voiceplatform.wire import AsrFinal, VadSpeechEnded, VadSpeechStarted

RATE = 16000
REPLY_MS = 500


class FirstFrameSink:
    def __init__(self) -> None:
        self.frames: list[float] = []

    async def send_audio(self, pcm: bytes) -> None:
        self.frames.append(time.monotonic())

    async def send_event(self, event: dict[str, Any]) -> None:
        return None

    async def flush(self, turn_id: str) -> None:
        return None

    async def close(self, reason: str) -> None:
        return None


def robot(folder: Path, enabled: bool) -> RobotConfig:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "llm": {"provider": "openai"},
        "turns": {"no_input_s": 0},
        "deadlines": {"enabled": enabled, "reply_ms": REPLY_MS},
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_wav(folder / "greeting.wav", np.zeros(RATE // 50, dtype=np.int16), RATE)  # one frame
    return load_robot(folder)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def one_call(broker: MemoryBroker, bot: RobotConfig, turns: int, late: list[float]) -> None:
    sink = FirstFrameSink()
    session = CallSession(broker.bus("gateway"), bot, channel="web", sample_rate=RATE, sink=sink)
    workers = broker.bus("workers")
    await session.start()
    call = session.call_id
    await asyncio.sleep(0.1)
    for i in range(turns):
        turn = f"u{i}"
        started = VadSpeechStarted(call_id=call, turn_id=turn, audio_offset_ms=0)
        await workers.publish(subjects.vad(call), started)
        await workers.publish(
            subjects.vad(call), VadSpeechEnded(call_id=call, turn_id=turn, audio_offset_ms=900, speech_ms=900)
        )
        await workers.publish(subjects.asr(call), AsrFinal(call_id=call, turn_id=turn, text="у меня собака"))
        while (t := session.turns.get(turn)) is None or not t.expects_reply:
            await asyncio.sleep(0.001)
        due = time.monotonic() + REPLY_MS / 1000
        before = len(sink.frames)
        while len(sink.frames) == before:
            await asyncio.sleep(0.001)
        late.append((sink.frames[before] - due) * 1000)
        while session.turns.live():  # the line plays to its end before the next turn
            await asyncio.sleep(0.05)
    await session.end("bench")


async def idle_cpu(broker: MemoryBroker, bot: RobotConfig, calls: int, idle_s: float) -> float:
    sessions = [
        CallSession(broker.bus("gateway"), bot, channel="web", sample_rate=RATE, sink=FirstFrameSink())
        for _ in range(calls)
    ]
    for s in sessions:
        await s.start()
    await asyncio.sleep(0.5)
    cpu0 = time.process_time()
    await asyncio.sleep(idle_s)
    cpu = time.process_time() - cpu0
    for s in sessions:
        await s.end("bench")
    return cpu / (calls * idle_s) * 1000  # CPU ms per call-second


async def main(levels: list[int], turns: int, idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        on, off = robot(Path(tmp) / "on", True), robot(Path(tmp) / "off", False)
        print(f"reply_ms={REPLY_MS}; late = first fallback frame - deadline (ms)", end="; ")
        print("cpu = CPU ms per call-second")
        for calls in levels:
            late: list[float] = []
            broker = MemoryBroker()
            await asyncio.gather(*(one_call(broker, on, turns, late) for _ in range(calls)))
            cpu_on = await idle_cpu(MemoryBroker(), on, calls, idle_s)
            cpu_off = await idle_cpu(MemoryBroker(), off, calls, idle_s)
            print(
                f"calls={calls:4d} turns={len(late):4d} late p50={pct(late, 0.5):6.1f} "
                f"p95={pct(late, 0.95):6.1f} max={max(late):6.1f} | "
                f"cpu on={cpu_on:5.2f} off={cpu_off:5.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.levels, args.turns, args.idle_s))
