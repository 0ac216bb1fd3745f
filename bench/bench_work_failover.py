"""Redelivery gap of per-turn work (``voiceplatform.bus.work``): fault → another instance has it.

A worker process takes a turn request and works on it forever (its event loop alive, sending
progress acks); then it is killed (SIGKILL) or frozen (SIGSTOP). An idle instance in this process
pulls from the same consumer; the gap is the time from the fault to that instance starting the
work. The router, llm and tts use this same mechanism (their consumers differ in subject only).
Also: a busy instance must keep its work (no redelivery while its progress acks come).

    .venv/bin/python bench/bench_work_failover.py [--repeats 10] [--ack-wait 2.0] [--nats URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voiceplatform import subjects
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.streams import WORK
from voiceplatform.bus.work import WorkSpec, take_work
from voiceplatform.wire import LlmRequest
from voiceplatform_devstack.devinfra import EmbeddedNats

WORKER = """
import asyncio, sys
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.streams import WORK
from voiceplatform.bus.work import WorkSpec, take_work

async def main(url, ack_wait):
    bus = await NatsBus.connect(url, "bench-worker")
    async def forever(env, attempt):
        await bus.publish(subjects.lifecycle(env.message.call_id), env.message)  # "I have it"
        await asyncio.Event().wait()
    spec = WorkSpec(WORK, "bench", subjects.ANY_LLM_REQUEST, ack_wait_s=ack_wait, max_deliver=5)
    await take_work(bus, spec, forever)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def request(call_id: str) -> LlmRequest:
    return LlmRequest(
        call_id=call_id,
        turn_id=f"{call_id}-1",
        robot="bench",
        prompt_id="default",
        system_prompt="",
        history=[],
        user_text="",
        sample_rate=16000,
    )


async def one_fault(url: str, ack_wait: float, fault: signal.Signals, busy_s: float) -> float:
    bus = await NatsBus.connect(url, "bench")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        url,
        str(ack_wait),
        stdout=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    assert proc.stdout is not None
    await proc.stdout.readline()
    call_id = f"b{uuid.uuid4().hex[:10]}"
    taken = asyncio.Event()
    retaken = asyncio.Event()
    retaken_at = 0.0

    async def first(env: Envelope) -> None:
        taken.set()

    async def second(env: Envelope, attempt: int) -> None:
        nonlocal retaken_at
        retaken_at = time.monotonic()
        retaken.set()

    sub = await bus.subscribe(subjects.lifecycle(call_id), first)
    await bus.publish(subjects.llm_request(call_id), request(call_id))
    await asyncio.wait_for(taken.wait(), 10)
    other_bus = await NatsBus.connect(url, "bench-other")
    spec = WorkSpec(WORK, "bench", subjects.ANY_LLM_REQUEST, ack_wait_s=ack_wait, max_deliver=5)
    other = await take_work(other_bus, spec, second)
    await asyncio.sleep(busy_s)  # the worker is busy (alive) this long: it must keep the work
    assert not retaken.is_set(), "a live busy worker lost its work"
    faulted = time.monotonic()
    proc.send_signal(fault)
    await asyncio.wait_for(retaken.wait(), 30)
    gap = retaken_at - faulted
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    await other.stop(1.0)
    await sub.unsubscribe()
    await other_bus.close()
    await bus.close()
    return gap


async def run(repeats: int, ack_wait: float, url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = None if url else await asyncio.to_thread(EmbeddedNats.start, Path(tmp) / "nats")
        nats_url = url or (server.url if server else "")
        try:
            for fault in (signal.SIGKILL, signal.SIGSTOP):
                # the fault lands at a random point between two progress acks
                busy = [ack_wait * 1.5 + random.uniform(0, ack_wait / 3) for _ in range(repeats)]
                gaps = [await one_fault(nats_url, ack_wait, fault, busy_s=b) for b in busy]
                gaps.sort()
                p95 = gaps[min(len(gaps) - 1, round(0.95 * (len(gaps) - 1)))]
                print(
                    f"{fault.name:8} n={len(gaps)} gap ms p50={1000 * statistics.median(gaps):.0f} "
                    f"p95={1000 * p95:.0f} max={1000 * gaps[-1]:.0f} (ack wait {ack_wait} s; "
                    f"a busy worker kept its work for {ack_wait * 1.5:.1f}+ s every time)"
                )
        finally:
            if server is not None:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--nats", default=None, help="use this NATS server (default: a private one)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    asyncio.run(run(args.repeats, args.ack_wait, args.nats))


if __name__ == "__main__":
    main()
