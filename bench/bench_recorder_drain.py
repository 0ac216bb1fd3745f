"""Recorder capacity without an observer: how fast one recorder drains a backlog, and its CPU per event.

``--calls`` simulated calls (``bench.recorder_load.SimulatedCall``, ``--turns`` turns each, 80 under
way at a time) are published into a fresh stream of a private NATS first; then a recorder starts in
this process (the real PostgreSQL and Redis on loopback, its own schema; MongoDB off) and every store
consumer drains the stream. Reported per store: the time until its consumer has nothing left
(events/s = events / that time), the process's CPU per event (user + system over the drain,
all stores together) and how many calls were read back from the stream for a view of the call.
Unlike ``bench_recorder.py`` nothing polls the databases meanwhile, so the figures are the
recorder's own (still shared with whatever else runs on the machine).

    .venv/bin/python bench/bench_recorder_drain.py [--calls 600] [--turns 6] [--no-call-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import structlog

from bench.recorder_load import SimulatedCall, interleave
from voiceplatform.bus.jetstream import ensure_stream
from voiceplatform.bus.nats import NatsBus
from voiceplatform_devstack.devinfra import EmbeddedNats
from vp_recorder.app import RecorderService, call_events_stream
from vp_recorder.settings import RecorderSettings

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/15"
UNDER_WAY = 80


async def publish_calls(bus: NatsBus, prefix: str, calls: int, turns: int) -> int:
    published = 0
    simulated = (SimulatedCall(f"{prefix}-{n}", turns) for n in range(calls))
    for item in interleave(simulated, UNDER_WAY, random.Random(7)):
        await bus.publish(*item)
        published += 1
    await bus.client.flush()
    return published


async def drain(args: argparse.Namespace, workdir: Path) -> None:
    server = EmbeddedNats.start(workdir / "nats")
    tag = uuid.uuid4().hex[:8]
    settings = RecorderSettings(
        POSTGRES_DSN=args.postgres_dsn, REDIS_URL=args.redis_url, MONGO_URI=None,
        postgres_schema=f"bench_drain_{tag}", stream_name=f"BENCH_DRAIN_{tag.upper()}",
        parked_stream_name=f"BENCH_DRAIN_{tag.upper()}_PARKED", call_logs=not args.no_call_logs,
        call_logs_dir=workdir / "call_logs", orphan_after_s=0,
    )  # type: ignore[call-arg]  # fmt: skip
    gateway = await NatsBus.connect(server.url, "bench-gateway")
    recorder_bus = await NatsBus.connect(server.url, "bench-recorder")
    service = RecorderService(settings)
    try:
        await ensure_stream(gateway.jetstream(), call_events_stream(settings))
        events = await publish_calls(gateway, f"drain-{tag}", args.calls, args.turns)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before, started = usage.ru_utime + usage.ru_stime, time.perf_counter()
        await service.start(recorder_bus)
        drained: dict[str, float] = {}
        while len(drained) < len(service.consumers):
            for consumer in service.consumers:
                if consumer.name not in drained and consumer.written and await consumer.caught_up():
                    drained[consumer.name] = time.perf_counter() - started
            await asyncio.sleep(0.05)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
        wall_s = max(drained.values())
        read_backs = service.health().get("call_read_backs", "-")
        print(
            f"{events} events of {args.calls} calls drained in {wall_s:.2f} s; recorder CPU "
            f"{1000 * cpu_s / events:.3f} ms/event ({100 * cpu_s / wall_s:.0f}% of a core); "
            f"calls read back: {read_backs}"
        )
        for name, seconds in sorted(drained.items(), key=lambda item: item[1]):
            print(f"  {name:12s} {seconds:6.2f} s  {events / seconds:7.0f} events/s")
    finally:
        await service.drain(5.0)
        await recorder_bus.close()
        await gateway.close()
        server.stop()
        conn = await asyncpg.connect(args.postgres_dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.postgres_schema}" CASCADE')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--no-call-logs", action="store_true", help="without the reports store")
    parser.add_argument("--postgres-dsn", default=POSTGRES_DSN)
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    with tempfile.TemporaryDirectory(prefix="vp-bench-drain-") as tmp:
        asyncio.run(drain(args, Path(tmp)))


if __name__ == "__main__":
    main()
