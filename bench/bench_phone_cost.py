"""What a phone call costs: CPU milliseconds per call-second of every process on the phone path.

The same platform as ``bench/bench_phone.py`` (FreeSWITCH peer → gateway-fs process → NATS → vad,
asr, prompt-router, llm, tts on the instant engines → recorder process on PostgreSQL and Redis), the
same callers (greeted, then a 1 s utterance and the robot's reply, again and again; ``phone_load``).
Instead of lag, which depends on whatever else runs on the machine, it reports cost, which does
not: each process's user + system CPU time (``/proc/<pid>/stat``) over a window in which all
``--calls`` are up, divided by the caller frames handled in that window (``vp_audio_frames_in_total``
of vad and asr for themselves, of gateway-fs for every other process), times 50 frames per
call-second. The frames per call-second each of the three handled are printed next to the 50 they
should be: fewer means that process, or the load generator, fell behind the window.

``--silent`` callers say nothing (the per-frame path and the calls' timers alone); by default they
talk as in ``bench_phone`` (a turn every ~3 s: the per-turn stages and the recorder are in).

    calls per core ≈ 1000 ms / (sum of the per-call-second costs of the phone path)

The phone path is every process but the load generator (``peer``). ``--repeat`` runs the window
several times and reports the median, since a busy machine also slows the CPU (caches, SMT).

    .venv/bin/python bench/bench_phone_cost.py [--calls 40] [--seconds 20] [--repeat 1] [--silent]
        [--no-recorder]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.bench_phone import DEFAULT_POSTGRES, DEFAULT_REDIS, PhoneStack, Recorder
from bench.phone_load import (
    GAP_S,
    MAX_SPREAD_S,
    NUMBER,
    RATE,
    CallPlan,
    LevelStats,
    caller_speech,
    cpu_seconds,
    run_call,
    wakeups,
)
from bench.platform_stack import ProcessStack
from voiceplatform.phone_stream import stream_url
from voiceplatform_devstack import FreeSwitchPeer

PEER = "peer"
FRAMES_PER_S = 50
COUNTED = ("gateway-fs", "vad", "asr")  # processes whose accepted caller frames are shown


@dataclass
class Cost:
    calls: int
    window_s: float
    frames: dict[str, float] = field(default_factory=dict)  # caller frames accepted in the window
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per process, over the window
    wakeups: dict[str, float] = field(default_factory=dict)  # per process, over the window

    def per_call_second(self, name: str) -> float:
        """CPU ms per frame the process handled in the window (vad and asr count their own, the rest
        go by the gateway's), times 50 frames a second: a process that fell behind the window on a
        busy machine is not made to look cheap by the frames it has not handled yet."""
        frames = self.frames.get(name, self.frames.get("gateway-fs", math.nan))
        if not frames or math.isnan(frames):
            return self.cpu_ms[name] / (self.calls * self.window_s)
        return self.cpu_ms[name] / frames * FRAMES_PER_S

    def wakeups_per_call_second(self, name: str) -> float:
        return self.wakeups.get(name, math.nan) / (self.calls * self.window_s)

    @property
    def path(self) -> list[str]:
        return [n for n in self.cpu_ms if n != PEER]

    def path_total(self) -> float:
        return sum(self.per_call_second(n) for n in self.path)


def http_ports(stack: PhoneStack) -> dict[str, int]:
    """The /metrics port of gateway-fs, and of vad and asr (they log the port they bound)."""
    assert stack.gateway is not None
    ports = {"gateway-fs": stack.gateway.http_port}
    if isinstance(stack.pipeline, ProcessStack):
        for role in COUNTED[1:]:
            for line in (stack.pipeline.log_dir / f"{role}.log").read_text(errors="replace").splitlines():
                if '"service.started"' in line:
                    ports[role] = int(json.loads(line)["http_port"])
    return ports


async def frames_in(ports: dict[str, int]) -> dict[str, float]:
    """Each process's ``vp_audio_frames_in_total``."""
    counts = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for name, port in ports.items():
            line = rf'^vp_audio_frames_in_total\{{service="{name}"\}} ([0-9.e+]+)$'
            found = re.search(line, (await client.get(f"http://127.0.0.1:{port}/metrics")).text, re.M)
            counts[name] = float(found.group(1)) if found else math.nan
    return counts


async def silent_call(peer: FreeSwitchPeer, plan: CallPlan, stats: LevelStats) -> None:
    """A caller who says nothing (silence frames, no turns): only the per-frame path runs."""
    metadata = json.dumps({"dnis": NUMBER, "caller": plan.caller, "rate": RATE})
    url = stream_url(plan.ws_base, plan.uuid, plan.secret)
    call = await peer.place_call(
        url, destination=NUMBER, caller=plan.caller, metadata=metadata, uuid=plan.uuid, answer=False
    )
    try:
        await call.answer()
        stats.answered += 1
        await asyncio.sleep(plan.seconds)
        if call.ended.is_set():
            stats.error("ended_by_platform")
    finally:
        await call.hangup()


async def measure(stack: PhoneStack, step: int, calls: int, seconds: float, speech: bytes | None) -> Cost:
    """``calls`` concurrent calls of ``seconds``; CPU and frames over the window all of them are up.

    ``speech`` None: silent callers."""
    assert stack.peer is not None and stack.gateway is not None
    stats = LevelStats(calls, seconds)
    spread = min(MAX_SPREAD_S, 0.05 * calls)

    async def one(i: int) -> None:
        plan: CallPlan = stack.plan(step, speech or b"")
        plan.uuid, plan.seconds, plan.caller = f"{plan.uuid}-{i:04d}", seconds, f"7999{step:02d}{i:05d}"
        await asyncio.sleep(spread * i / calls + 0.02 * ((i * 0.6180339887) % 1.0))
        assert stack.peer is not None
        if speech is None:
            await silent_call(stack.peer, plan, stats)
        else:
            await run_call(stack.peer, plan, stats)

    task = asyncio.gather(*(one(i) for i in range(calls)))
    await asyncio.sleep(spread + 1.0)  # every call answered and greeted
    pids = stack.pids()
    pids[PEER] = pids.pop("peer", os.getpid())
    ports = http_ports(stack)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    woken_before = {name: wakeups(pid) for name, pid in pids.items()}
    frames_before, started = await frames_in(ports), time.monotonic()
    await asyncio.sleep(max(1.0, seconds - spread - 1.5))
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    woken_after = {name: wakeups(pid) for name, pid in pids.items()}
    frames_after, window = await frames_in(ports), time.monotonic() - started
    await task
    stack.peer.all_calls[:] = [c for c in stack.peer.all_calls if not c.ended.is_set()]
    if stats.errors or stats.answered != calls:
        print(
            f"  (step {step}: answered {stats.answered}/{calls}, errors {stats.errors})", file=sys.__stderr__
        )
    cost = Cost(calls, window, {n: frames_after[n] - frames_before[n] for n in ports})
    cost.cpu_ms = {name: (after[name] - before[name]) * 1000 for name in pids}
    cost.wakeups = {name: woken_after[name] - woken_before[name] for name in pids}
    return cost


def report(costs: list[Cost]) -> str:
    names = [*costs[0].path, PEER]
    head = f"{'process':>14} | {'CPU ms per call-second':>22} | {'wake-ups per call-second':>24}"
    lines = [head, "-" * len(head)]
    for name in names:
        values = [c.per_call_second(name) for c in costs]
        woken = [c.wakeups_per_call_second(name) for c in costs]
        lines.append(f"{name:>14} | {statistics.median(values):>22.2f} | {statistics.median(woken):>24.1f}")
    total = statistics.median(c.path_total() for c in costs)
    woken_total = statistics.median(sum(c.wakeups_per_call_second(n) for n in c.path) for c in costs)
    frames = {
        n: statistics.median(c.frames.get(n, 0.0) / (c.calls * c.window_s) for c in costs)
        for n in costs[0].frames
    }
    lines += [
        "-" * len(head),
        f"{'phone path':>14} | {total:>22.2f} | {woken_total:>24.1f}   (every process but the peer)",
        f"calls per core ≈ 1000 / {total:.2f} = {1000 / total:.0f}",
        "caller frames accepted per call-second (50 expected; fewer: that process fell behind): "
        + ", ".join(f"{n} {f:.1f}" for n, f in frames.items()),
    ]
    return "\n".join(lines)


async def run(
    calls: int,
    seconds: float,
    repeat: int,
    recorder: tuple[str, str] | None,
    silent: bool,
    gap_s: float = GAP_S,
) -> list[Cost]:
    with tempfile.TemporaryDirectory(prefix="vp-bench-cost-") as tmp:
        root = Path(tmp)
        tag = uuidlib.uuid4().hex[:8]
        rec = Recorder(recorder[0], recorder[1], root / "recorder", tag) if recorder else None
        stack = PhoneStack(root, "procs", 25, rec, tag=tag, gap_s=gap_s)
        try:
            await stack.start()
            assert stack.peer is not None
            speech = caller_speech(0)
            warm = stack.plan(0, speech)
            warm.uuid, warm.seconds = f"{warm.uuid}-warmup", 5.0
            await run_call(stack.peer, warm, None)
            gc.collect()
            gc.freeze()
            talk = None if silent else speech
            return [await measure(stack, step, calls, seconds, talk) for step in range(1, repeat + 1)]
        finally:
            gc.unfreeze()
            await stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=40, help="concurrent calls")
    parser.add_argument("--seconds", type=float, default=20.0, help="each call's length")
    parser.add_argument("--repeat", type=int, default=1, help="windows measured (median reported)")
    parser.add_argument("--no-recorder", action="store_true", help="leave the recorder out")
    parser.add_argument("--silent", action="store_true", help="callers say nothing: the per-frame path only")
    parser.add_argument(
        "--gap", type=float, default=GAP_S, help="silence after a reply, s (0.3: a turn every ~2.5 s)"
    )
    args = parser.parse_args()
    stores = None
    if not args.no_recorder:
        stores = (
            os.environ.get("POSTGRES_DSN", DEFAULT_POSTGRES),
            os.environ.get("REDIS_URL", DEFAULT_REDIS),
        )

    from voiceplatform.logging import configure_logging

    configure_logging("bench", "WARNING", json=True)
    load = os.getloadavg()[0]
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115  # the services' start-up chatter
    try:
        costs = asyncio.run(run(args.calls, args.seconds, args.repeat, stores, args.silent, args.gap))
    finally:
        sys.stderr = sys.__stderr__
    print(
        f"phone call cost: {args.calls} concurrent {'silent ' if args.silent else ''}calls x "
        f"{args.seconds:.0f} s{'' if args.silent else f' ({args.gap:g} s after each reply)'}, "
        f"FreeSWITCH peer → gateway-fs → instant pipeline"
        f"{' + recorder' if stores else ''}, window {costs[0].window_s:.1f} s x {len(costs)}, "
        f"load average before {load:.1f} (cost does not depend on it; lag would)"
    )
    print(report(costs))


if __name__ == "__main__":
    main()
