"""Platform overhead per turn with instant engines, at 1, 10 and 50 concurrent simulated calls.

The engines are replaced by instant ones defined in ``bench/instant_engines.py`` (ASR returns a fixed
Russian text, TTS 200 ms of tone, the LLM is the instant ``script`` engine); the energy VAD is real.
The services (vad, asr, prompt-router, llm, tts; not the recorder) talk over the real NATS server,
in this process (``--layout inproc``, one NATS connection per service) or one process per service
(``--layout procs``). Simulated calls are gateway ``CallSession`` objects driven directly (one NATS
connection for all of them, as in one gateway process): each streams 20 ms frames in real time,
1 s of loud tone then silence until the reply has played, for a few turns.

Per turn it reports
- ``v2v``: the gateway's own ``turn.metrics`` voice_to_voice_ms (VAD's speech-end timestamp → first
  robot frame sent), i.e. what the platform adds after the VAD has decided;
- ``overhead``: last speech frame pushed → first robot frame at the sink, minus the VAD hang-over
  (silence_frames × 20 ms): the same from the caller's side, including the audio hop to the VAD;
- ``frame lag``: how late the gateway's playout sent reply frames against its 20 ms schedule;
- ``caller lag``: how late this bench pushed caller frames (if high, the client is saturated).

    .venv/bin/python bench/bench_platform.py [--levels 1 10 50] [--turns 5] [--layout inproc|procs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.caller_signal import FRAME_S, GAP_FRAMES, RATE, caller_frames
from bench.platform_report import STAGES, LevelResult, format_stages, format_table
from bench.platform_stack import ROBOT, InProcessStack, ProcessStack, make_robot, tts_mode
from voiceplatform.bus.nats import NatsBus
from voiceplatform.config import RobotConfig, RobotRegistry
from voiceplatform.gateway import CallSession, GatewayDirectory
from voiceplatform_devstack.devinfra import EmbeddedNats

TURN_TIMEOUT_S = 6.0
ASSIGN_TIMEOUT_S = 10.0
LEAD_FRAMES = 3  # CallSession default: frames sent at once before pacing starts
MIN_TURNS = 15  # per concurrency level, so p95 means something at concurrency 1


class BenchSink:
    """AudioSink that timestamps every robot frame and collects the gateway's events."""

    def __init__(self) -> None:
        self.frame_times: list[float] = []
        self.turn_metrics: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.errors: list[str] = []
        self.closed_reason = ""

    async def send_audio(self, pcm: bytes) -> None:
        self.frame_times.append(time.monotonic())

    async def send_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "turn.metrics":
            self.turn_metrics.put_nowait(event)
        elif event.get("type") == "error":
            self.errors.append(f"{event.get('stage')}:{event.get('kind')}")

    async def flush(self, turn_id: str) -> None:
        self.errors.append("unexpected_barge_in")

    async def close(self, reason: str) -> None:
        self.closed_reason = reason


class FramePacer:
    """Pushes caller frames on an absolute 20 ms schedule and records how late each push was."""

    def __init__(self, session: CallSession) -> None:
        self.session = session
        self.start = time.monotonic()
        self.sent = 0
        self.lateness_ms: list[float] = []
        self.last_push = 0.0

    async def push(self, frame: bytes) -> None:
        due = self.start + self.sent * FRAME_S
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        self.lateness_ms.append(max(0.0, (now - due) * 1000))
        await self.session.push_audio(frame)
        self.last_push = now
        self.sent += 1


def reply_frame_lags(frame_times: list[float]) -> list[float]:
    """Lateness of each reply frame against the playout schedule (first frames sent at once)."""
    if not frame_times:
        return []
    t0 = frame_times[0]
    return [
        max(0.0, (t - (t0 + max(0, k - LEAD_FRAMES) * FRAME_S)) * 1000) for k, t in enumerate(frame_times)
    ]


async def simulated_call(
    bus: NatsBus,
    robot: RobotConfig,
    directory: GatewayDirectory,
    turns: int,
    start_delay: float,
    hangover_ms: float,
    result: LevelResult | None,
    seed: int,
) -> None:
    await asyncio.sleep(start_delay)
    speech, silence = caller_frames(seed)
    sink = BenchSink()
    session = CallSession(bus, robot, channel="web", sample_rate=RATE, sink=sink, directory=directory)
    started = time.monotonic()
    await session.start()
    try:
        deadline = started + ASSIGN_TIMEOUT_S
        while not {"vad", "asr"} <= session.owners.keys():
            if time.monotonic() > deadline:
                if result is not None:
                    result.error("assign_timeout")
                return
            await asyncio.sleep(0.01)
        pacer = FramePacer(session)
        for _ in range(turns):
            for frame in speech:
                await pacer.push(frame)
            last_speech = pacer.last_push
            first_frame_index = len(sink.frame_times)
            metrics_task = asyncio.ensure_future(sink.turn_metrics.get())
            turn_deadline = last_speech + TURN_TIMEOUT_S
            while not metrics_task.done() and time.monotonic() < turn_deadline:
                await pacer.push(silence)
            if not metrics_task.done():
                metrics_task.cancel()
                if result is not None:
                    result.error("turn_timeout")
                continue
            event = metrics_task.result()
            reply_frames = sink.frame_times[first_frame_index:]
            if result is not None:
                if event.get("interrupted"):
                    result.error("interrupted")
                elif not reply_frames or event.get("voice_to_voice_ms") is None:
                    result.error("no_reply_audio")
                else:
                    result.v2v_ms.append(float(event["voice_to_voice_ms"]))
                    result.overhead_ms.append((reply_frames[0] - last_speech) * 1000 - hangover_ms)
                    result.frame_lag_ms.extend(reply_frame_lags(reply_frames))
                    for stage in STAGES:
                        if event.get(stage) is not None:
                            result.stages.setdefault(stage, []).append(float(event[stage]))
            for _ in range(GAP_FRAMES):
                await pacer.push(silence)
        if result is not None:
            result.caller_lag_ms.extend(pacer.lateness_ms)
    finally:
        await session.end("bench_done")
        if result is not None:
            result.call_seconds += time.monotonic() - started
            for err in sink.errors:
                result.error(err)


def process_cpu_seconds(pids: list[int]) -> float:
    """CPU of running processes (from /proc: they are not our waited-for children yet)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_seconds(pids: list[int]) -> float:
    """CPU of this process (the gateway, the simulated callers, in-process services) plus ``pids``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + process_cpu_seconds(pids)


async def run_level(
    bus: NatsBus,
    robot: RobotConfig,
    directory: GatewayDirectory,
    concurrency: int,
    turns: int,
    pids: list[int],
    nats_pids: list[int],
    min_turns: int = MIN_TURNS,
) -> LevelResult:
    turns_per_call = max(turns, math.ceil(min_turns / concurrency))
    result = LevelResult(concurrency, turns_per_call * concurrency)
    hangover_ms = robot.settings.vad.silence_frames * FRAME_S * 1000
    cpu_before, nats_before = cpu_seconds(pids), process_cpu_seconds(nats_pids)
    spread = min(2.0, 0.04 * concurrency)  # staggered starts: calls do not speak in lock-step
    await asyncio.gather(
        *(
            simulated_call(
                bus, robot, directory, turns_per_call, random.uniform(0, spread), hangover_ms, result, i
            )
            for i in range(concurrency)
        )
    )
    result.cpu_seconds = cpu_seconds(pids) - cpu_before
    result.nats_cpu_seconds = process_cpu_seconds(nats_pids) - nats_before
    return result


async def run_benchmark(
    levels: list[int],
    turns: int,
    layout: str = "inproc",
    nats_url: str | None = None,
    silence_frames: int = 25,
    workdir: Path | None = None,
    min_turns: int = MIN_TURNS,
) -> list[LevelResult]:
    """Start the services, run one warm-up call, then each concurrency level in turn.

    Without ``nats_url`` a private NATS server (JetStream on) is started for the run: services of
    other people's test runs on a shared server would join our queue groups and take our calls.
    """
    with tempfile.TemporaryDirectory(prefix="vp-bench-platform-") as tmp:
        root = workdir or Path(tmp)
        nats_server: EmbeddedNats | None = None
        if nats_url is None:
            nats_server = await asyncio.to_thread(EmbeddedNats.start, root / "nats")
            nats_url = nats_server.url
        try:
            return await _run_on(
                nats_url, levels, turns, layout, silence_frames, root, min_turns, nats_server
            )
        finally:
            if nats_server is not None:
                await asyncio.to_thread(nats_server.stop)


async def _run_on(
    nats_url: str,
    levels: list[int],
    turns: int,
    layout: str,
    silence_frames: int,
    root: Path,
    min_turns: int,
    nats_server: EmbeddedNats | None,
) -> list[LevelResult]:
    robots_dir = make_robot(root / "robots", silence_frames)
    stack: InProcessStack | ProcessStack
    if layout == "procs":
        stack = ProcessStack(robots_dir, nats_url, root / "logs")
    else:
        stack = InProcessStack(robots_dir, nats_url)
    await stack.start()
    bus = await NatsBus.connect(nats_url, "bench-gateway")
    directory = GatewayDirectory(bus, required=("vad", "asr", "prompt-router", "llm", "tts"))
    await directory.start()
    try:
        if isinstance(stack, ProcessStack):
            await _wait_presence(directory, stack)
        robot = RobotRegistry(robots_dir).get(ROBOT)
        await simulated_call(bus, robot, directory, 1, 0.0, 0.0, None, 999)  # warm-up, discarded
        nats_pid = [nats_server.process.pid] if nats_server is not None else []
        results = []
        for concurrency in levels:
            results.append(
                await run_level(bus, robot, directory, concurrency, turns, stack.pids(), nats_pid, min_turns)
            )
        return results
    finally:
        await directory.stop()
        await bus.drain()
        await stack.stop()


async def _wait_presence(directory: GatewayDirectory, stack: ProcessStack, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while directory.missing_roles():
        if stack.exited() or time.monotonic() > deadline:
            raise RuntimeError(
                f"services not ready: missing {directory.missing_roles()}, exited {stack.exited()}"
            )
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--turns", type=int, default=5, help="turns per call (at least 15 per level)")
    parser.add_argument("--layout", choices=["inproc", "procs"], default="inproc")
    parser.add_argument(
        "--nats",
        default=None,
        help="use this NATS server (default: a private one; a shared server mixes in others' services)",
    )
    parser.add_argument("--silence-frames", type=int, default=25, help="VAD hang-over (robot default 25)")
    parser.add_argument("--log", type=Path, default=None, help="in-process service logs (default: discarded)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args()

    from voiceplatform.logging import configure_logging

    # in-process services log at INFO like in production, into a file (or nowhere) rather than the table
    configure_logging("bench", "INFO", json=True)
    log_file = (args.log or Path(os.devnull)).open("w")
    sys.stderr = log_file
    started = time.monotonic()
    load_before = os.getloadavg()[0]  # other work on the machine skews the tail
    try:
        results = asyncio.run(
            run_benchmark(args.levels, args.turns, args.layout, args.nats, args.silence_frames)
        )
    finally:
        sys.stderr = sys.__stderr__
        log_file.close()
    print(
        f"platform overhead, instant engines, layout={args.layout}, tts={tts_mode()}, "
        f"VAD hang-over {args.silence_frames * 20} ms subtracted from 'overhead', {os.cpu_count()} cores, "
        f"load average before {load_before:.2f}"
    )
    print(format_table(results))
    print("\nstages after the VAD's speech end (ms, gateway turn.metrics):")
    print(format_stages(results))
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results]))


if __name__ == "__main__":
    main()
