"""Routing latency of the prompt-router: ``asr.final`` published → ``llm.request`` received.

Seed 004 claims a prompt switch in < 100 ms. This measures ours end to end, through the bus and the
dialogue state store (KV compare-and-set), one turn at a time, over the in-memory twin and over a
real NATS server with JetStream KV. Half of the messages switch the topic; every turn also gets an
``llm.done`` so the history grows as in a real call.

    .venv/bin/python bench/bench_router.py [--turns 1000] [--calls 10] [--nats nats://127.0.0.1:4222]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path

from voiceplatform import subjects
from voiceplatform.bus import Bus, Envelope
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import AsrFinal, CallEnded, CallStarted, LlmDone, LlmRequest, PromptSwitched
from vp_router.app import RouterService
from vp_router.dialog_state import DialogStore
from vp_router.settings import RouterSettings

ROBOTS = Path(__file__).resolve().parent.parent / "robots"
ROBOT = "topic_prompts_russian"
UTTERANCES = [
    "Здравствуйте, у меня есть собака",  # → pets
    "А чем её лучше кормить?",  # stays
    "Честно говоря, денег совсем нет",  # → earning
    "А где можно подработать?",  # stays
    "У меня двое детей, сыну пять лет",  # → children
    "Расскажите подробнее, пожалуйста",  # stays
]
WARMUP = 50


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(router_bus: Bus, client: Bus, turns: int, n_calls: int) -> tuple[list[float], int]:
    router = RouterService(RouterSettings(robots_dir=ROBOTS))
    await router.start(router_bus)
    arrived: dict[str, asyncio.Future[float]] = {}
    switches = 0

    async def on_message(env: Envelope) -> None:
        nonlocal switches
        msg = env.message
        if isinstance(msg, LlmRequest) and msg.turn_id in arrived:
            arrived[msg.turn_id].set_result(time.perf_counter())
        elif isinstance(msg, PromptSwitched):
            switches += 1

    run = uuid.uuid4().hex[:8]
    calls = [f"bench-{run}-{i}" for i in range(n_calls)]
    subs = [
        await client.subscribe(subjects.ANY_LLM_REQUEST, on_message),
        await client.subscribe(subjects.ANY_LIFECYCLE, on_message),
    ]
    await asyncio.sleep(0.2)  # subscriptions registered on the server
    store = await DialogStore.open(client)
    for call_id in calls:
        await client.publish(
            subjects.lifecycle(call_id),
            CallStarted(call_id=call_id, robot=ROBOT, channel="phone", sample_rate=8000),
        )
    for call_id in calls:
        while await store.load(call_id) is None:
            await asyncio.sleep(0.005)

    latencies: list[float] = []
    for i in range(turns + WARMUP):
        call_id = calls[i % n_calls]
        turn_id = f"{call_id}-t{i}"
        text = UTTERANCES[(i // n_calls) % len(UTTERANCES)]
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        arrived[turn_id] = fut
        started = time.perf_counter()
        await client.publish(subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id=turn_id, text=text))
        done_at = await asyncio.wait_for(fut, 5.0)
        del arrived[turn_id]
        if i >= WARMUP:
            latencies.append((done_at - started) * 1000)
        await client.publish(
            subjects.llm_done(call_id),
            LlmDone(call_id=call_id, turn_id=turn_id, text="Хорошо, расскажу подробнее.", sentences=1),
        )
    for call_id in calls:
        await client.publish(subjects.lifecycle(call_id), CallEnded(call_id=call_id, reason="bench"))
    await asyncio.sleep(0.2)
    for sub in subs:
        await sub.unsubscribe()
    await router.drain(2.0)
    return latencies, switches


def report(label: str, latencies: list[float], switches: int) -> None:
    print(
        f"{label:<22} n={len(latencies):<5} p50={percentile(latencies, 50):6.2f} ms  "
        f"p95={percentile(latencies, 95):6.2f} ms  p99={percentile(latencies, 99):6.2f} ms  "
        f"max={max(latencies):6.2f} ms  mean={statistics.fmean(latencies):6.2f} ms  "
        f"prompt switches={switches}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--skip-nats", action="store_true")
    args = parser.parse_args()

    broker = MemoryBroker()
    lat, switches = await measure(broker.bus("prompt-router"), broker.bus("bench"), args.turns, args.calls)
    report("in-memory bus", lat, switches)
    if not args.skip_nats:
        router_bus = await NatsBus.connect(args.nats, "prompt-router")
        client = await NatsBus.connect(args.nats, "bench")
        try:
            lat, switches = await measure(router_bus, client, args.turns, args.calls)
            report("NATS + JetStream KV", lat, switches)
        finally:
            await client.close()
            await router_bus.close()


if __name__ == "__main__":
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only
    asyncio.run(main())
