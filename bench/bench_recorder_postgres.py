"""The recorder's PostgreSQL write path alone: what a batch costs (one ``record_batch`` call).

``--calls`` simulated calls (``bench.recorder_load.SimulatedCall``, from half to one and a half times
``--turns`` turns each, ``--under-way`` at a time, their events interleaved at random as in
``bench_recorder.py``) are numbered as a stream would number them and written by one
``PostgresStore`` in batches of ``--batch`` events, one batch after the other, into a fresh schema
of the PostgreSQL on loopback. No NATS, no Redis, no other store: the figures are the write path's.

Reported: events/s over the whole run (wall time), the PostgreSQL backend's CPU per event (its
/proc stat, so the server must run on this machine) and, per statement kind, how often it ran and its
mean and total wall time as the client saw it (round trip included). Each statement is timed, so a
store that sent several per batch would show which costs; the total says how far a single
connection gets, whatever else the machine runs (wall times are noisy on a busy machine, CPU less
so).

    .venv/bin/python bench/bench_recorder_postgres.py [--calls 2000] [--turns 6] [--batch 100 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import structlog

from bench.recorder_load import SimulatedCall, interleave
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.postgres import PostgresStore

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def interleaved_calls(prefix: str, calls: int, turns: int, under_way: int) -> list[StoredEvent]:
    rng = random.Random(7)
    simulated = [
        SimulatedCall(f"{prefix}-{n}", rng.randint(max(1, turns // 2), turns + turns // 2))
        for n in range(calls)
    ]
    events = interleave(simulated, under_way, rng)
    return [StoredEvent(seq, *item) for seq, item in enumerate(events, start=1)]


class TimedConnection:
    """The store's connection, timing each statement by its first line (its kind)."""

    TIMED = frozenset({"execute", "executemany", "fetch", "fetchval"})

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.wall: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)
        if name not in self.TIMED:
            return method

        async def run(query: str, *args: Any, **kwargs: Any) -> Any:
            kind = f"{name} {' '.join(query.split())[:60]}"
            started = time.perf_counter()
            try:
                return await method(query, *args, **kwargs)
            finally:
                self.wall[kind] += time.perf_counter() - started
                self.count[kind] += 1

        return run


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(args: argparse.Namespace, batch: int) -> None:
    schema = f"bench_pg_{uuid.uuid4().hex[:8]}"
    events = interleaved_calls(schema, args.calls, args.turns, args.under_way)
    store = PostgresStore(args.postgres_dsn, schema)
    await store.connect()
    conn = store._conn
    assert conn is not None
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        timed = TimedConnection(conn)
        store._conn = timed  # type: ignore[assignment]
        cpu_before, started = backend_cpu_s(pid), time.perf_counter()
        for at in range(0, len(events), batch):
            await store.write(events[at : at + batch])
        wall_s, cpu_s = time.perf_counter() - started, backend_cpu_s(pid) - cpu_before
        store._conn = conn
        print(
            f"batch {batch}: {len(events)} events of {args.calls} calls in {wall_s:.2f} s = "
            f"{len(events) / wall_s:.0f} events/s; PostgreSQL backend CPU {1000 * cpu_s / len(events):.3f} "
            f"ms/event ({100 * cpu_s / wall_s:.0f}% of a core)"
        )
        print(f"  {'statement':68s} {'runs':>6} {'mean ms':>8} {'total s':>8} {'share':>6}")
        for kind, total in sorted(timed.wall.items(), key=lambda item: -item[1]):
            runs = timed.count[kind]
            print(
                f"  {kind:68s} {runs:6d} {1000 * total / runs:8.2f} {total:8.2f} {100 * total / wall_s:5.0f}%"
            )
    finally:
        store._conn = conn
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--under-way", type=int, default=50, help="calls under way at a time")
    parser.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--postgres-dsn", default=POSTGRES_DSN)
    args = parser.parse_args()
    for batch in args.batch:
        await run(args, batch)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    asyncio.run(main())
