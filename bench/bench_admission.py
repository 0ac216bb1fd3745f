"""Admission at 2× capacity: refused calls are told "busy" cleanly, admitted calls keep their latency.

The pipeline runs on the instant engines of ``bench_platform`` (real energy VAD, real NATS, a private
server) behind a real gateway-web process with ``max_calls = --capacity``. Each call is a WebSocket client as
``vp call`` is: it fetches a page token, streams 1 s of tone then silence in real time per turn, and
measures speech end (last tone frame sent) → first robot audio frame received. Phase 1 places
``capacity`` calls (the baseline); phase 2 offers ``2 × capacity`` at once. Printed per phase:
admitted / refused (busy close code) / failed, the admitted calls' reply latency p50/p95 (includes the
VAD hang-over, ``--silence-frames`` × 20 ms) and /health response time p50/p95 polled during the load.

``--anonymous N`` first opens N sockets at once without a token (the measured attack): each should be
refused (close 4401) while /health is polled.

    .venv/bin/python bench/bench_admission.py [--capacity 4] [--turns 3] [--anonymous 0] [--layout procs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.caller_signal import caller_frames
from bench.platform_stack import ROBOT, InProcessStack, ProcessStack, make_robot
from voiceplatform.cli.web_token import fetch_call_token
from voiceplatform.web_protocol import CLOSE_BUSY, CLOSE_TOKEN
from voiceplatform_devstack.devinfra import EmbeddedNats, free_port

REPO = str(Path(__file__).resolve().parent.parent)
FRAME_S = 0.02
TURN_TIMEOUT_S = 8.0


@dataclass
class Phase:
    offered: int
    admitted: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)


def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "—"


async def web_call(url: str, turns: int, seed: int, phase: Phase) -> None:
    speech, silence = caller_frames(seed)
    await asyncio.sleep(random.uniform(0, 0.5))
    token = await fetch_call_token(url, ROBOT)
    audio_at: list[float] = []
    replies: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "start", "token": token, "robot": ROBOT, "sample_rate": 16000}))

        async def receive() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    if isinstance(message, bytes):
                        audio_at.append(time.monotonic())
                    elif (event := json.loads(message))["type"] in ("call.started", "turn.metrics"):
                        replies.put_nowait(event)

        receiver = asyncio.create_task(receive())
        try:
            started = await asyncio.wait_for(replies.get(), 10.0)
        except TimeoutError:
            started = {}
        if not started:
            await receiver
            if ws.close_code == CLOSE_BUSY:
                phase.refused += 1
            else:
                phase.failed.append(f"closed {ws.close_code} {ws.close_reason}")
            return
        phase.admitted += 1
        start, sent = time.monotonic(), 0

        async def push(frame: bytes) -> None:
            nonlocal sent
            await ws.send(frame)
            sent += 1
            delay = start + sent * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

        for _ in range(turns):
            for frame in speech:
                await push(frame)
            speech_end, heard = time.monotonic(), len(audio_at)
            deadline = speech_end + TURN_TIMEOUT_S
            while replies.empty() and time.monotonic() < deadline:
                await push(silence)
            if replies.empty() or len(audio_at) == heard:
                phase.failed.append("no reply")
                continue
            replies.get_nowait()
            phase.reply_ms.append((audio_at[heard] - speech_end) * 1000)
            for _ in range(15):
                await push(silence)
        await ws.send(json.dumps({"type": "hangup"}))
        await asyncio.wait_for(receiver, 5.0)


async def anonymous_socket(url: str, phase: Phase) -> None:
    """A socket that sends audio without a token, as the 1000-socket measurement did."""
    async with connect(url) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(bytes(640))
            async for _ in ws:
                pass
        if ws.close_code == CLOSE_TOKEN:
            phase.refused += 1
        else:
            phase.admitted += 1


async def run_anonymous(url: str, base: str, n: int) -> Phase:
    phase, stop = Phase(n), asyncio.Event()
    poller = asyncio.create_task(poll_health(base, phase, stop))
    results = await asyncio.gather(*(anonymous_socket(url, phase) for _ in range(n)), return_exceptions=True)
    phase.failed += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    stop.set()
    await poller
    return phase


async def poll_health(base: str, phase: Phase, stop: asyncio.Event) -> None:
    """GET /health every 0.1 s from a thread of its own, so this process's busy loop does not delay it."""
    done = threading.Event()

    def poll() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                t = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{base}/health", timeout=10)
                    phase.health_ms.append((time.monotonic() - t) * 1000)
                done.wait(0.1)

    poller = asyncio.create_task(asyncio.to_thread(poll))
    await stop.wait()
    done.set()
    await poller


async def run_phase(url: str, base: str, offered: int, turns: int) -> Phase:
    phase, stop = Phase(offered), asyncio.Event()
    poller = asyncio.create_task(poll_health(base, phase, stop))
    results = await asyncio.gather(
        *(web_call(url, turns, i, phase) for i in range(offered)), return_exceptions=True
    )
    phase.failed += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    stop.set()
    await poller
    return phase


async def run(capacity: int, turns: int, layout: str, silence_frames: int, anonymous: int) -> list[Phase]:
    with tempfile.TemporaryDirectory(prefix="vp-bench-admission-") as tmp:
        root = Path(tmp)
        nats = await asyncio.to_thread(EmbeddedNats.start, root / "nats")
        robots = make_robot(root / "robots", silence_frames)
        stack = (
            ProcessStack(robots, nats.url, root / "logs")
            if layout == "procs"
            else InProcessStack(robots, nats.url)
        )
        port = free_port()
        env = {
            **os.environ,
            "NATS_URL": nats.url,
            "ROBOTS_DIR": str(robots),
            "VP_HTTP_PORT": str(port),
            "VP_DEFAULT_ROBOT": ROBOT,
            "VP_MAX_CALLS": str(capacity),
            "VP_LOG_LEVEL": "ERROR",
        }
        env.pop("VP_WEB_API_KEY", None)  # the clients use page tokens
        # -m bench.platform_stack from any working directory
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
        with (root / "gateway-web.log").open("wb") as log:  # its own process, as under `vp up`
            gateway = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bench.platform_stack", "--serve", "gateway-web"),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            await stack.start()
            base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
            async with httpx.AsyncClient() as client:
                for _ in range(300):  # ready when the pipeline is (the in-process stack does not announce)
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{base}/health")).status_code in (200, 503):
                            break
                    await asyncio.sleep(0.1)
            await run_phase(url, base, 1, 1)  # warm-up, discarded
            phases = [await run_anonymous(url, base, anonymous)] if anonymous else []
            return phases + [await run_phase(url, base, n, turns) for n in (capacity, 2 * capacity)]
        finally:
            gateway.send_signal(signal.SIGTERM)
            await asyncio.wait_for(gateway.wait(), 30)
            await stack.stop()
            await asyncio.to_thread(nats.stop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--capacity", type=int, default=4, help="gateway max_calls")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--anonymous", type=int, default=0, help="sockets without a token to offer first")
    parser.add_argument("--layout", choices=["inproc", "procs"], default="inproc")
    parser.add_argument("--silence-frames", type=int, default=25, help="VAD hang-over (robot default 25)")
    args = parser.parse_args()
    from voiceplatform.logging import configure_logging

    configure_logging("bench-admission", "ERROR")  # one warning per busy call otherwise
    phases = asyncio.run(run(args.capacity, args.turns, args.layout, args.silence_frames, args.anonymous))
    print(f"capacity {args.capacity} calls, {args.turns} turns per call, layout {args.layout}")
    print("offered  admitted  refused(busy)  failed  reply p50/p95 ms  /health p50/p95 ms")
    print("(a first row with no reply times is --anonymous: its refusals are close 4401, no token)")
    for p in phases:
        reply, health = (
            f"{pct(p.reply_ms, 50)}/{pct(p.reply_ms, 95)}",
            f"{pct(p.health_ms, 50)}/{pct(p.health_ms, 95)}",
        )
        print(
            f"{p.offered:7d}  {p.admitted:8d}  {p.refused:13d}  {len(p.failed):6d}  {reply:>16}  {health:>18}"
        )
        for failure in sorted(set(p.failed)):
            print(f"  failed: {failure}")


if __name__ == "__main__":
    main()
