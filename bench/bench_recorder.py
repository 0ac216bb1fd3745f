"""Recorder benchmark: events persisted end to end per second with their lag, and the catch-up after a
PostgreSQL outage.

Set-up: a private NATS server (EmbeddedNats), the PostgreSQL and Redis on loopback (embedded ones when
none runs), and the recorder as one process (``python -m vp_recorder``) with its default settings
apart from its own schema, stream, call-log folder and HTTP port. Simulated calls publish real wire
messages on core NATS from one connection, as gateways and workers do: call.started; per turn
asr.final, llm.done, control.interrupt (every third turn is a barge-in) and turn.metrics; call.ended.

(i) sustained: ``--rate`` events per second offered for ``--duration`` s over ``--calls`` concurrent
    calls (each of ``--turns`` turns give or take half, so calls do not all end together). An event's
    lag runs from its publish to the moment it is both committed in PostgreSQL and written in Redis.
    Those moments are observed from outside, every ``--poll-ms``, without touching the recorder:
    - the stream is new and one connection publishes, so the k-th published event has sequence k;
    - each store's consumer reads the stream in order and writes batch after batch, so once an event
      is stored every earlier one is: it is enough to follow the highest sequence stored;
    - PostgreSQL: the highest sequence in ``call_events`` among the calls of the next 64 outstanding
      events (one primary-key probe per call); a batch is one transaction, visible at once;
    - Redis: every event but control.interrupt leaves a mark on its call (history length, turn count,
      status), known in advance from what was published; one pipeline reads the marks of the calls of
      the next outstanding events;
    - an event counts as stored at the end of the first poll that shows it (or a later event)
      stored: late by at most one poll interval plus one round trip (control.interrupt, which leaves
      no mark, takes the moment of the next event that does).
    Persisted/s = events / (last event persisted - first event published): the offered rate while the
    recorder keeps up, when the lag of the last third of the events is also no higher than the first.
    Recorder CPU is its process's user + system time over the same span (all of them with
    ``--recorders`` N: N processes sharing the durable consumers). Over the same span a second line
    per rate gives the whole machine's busy CPU (every core, every process: what else runs on a
    shared machine shows there) and that of NATS, PostgreSQL and Redis (every process of each, so a
    shared server counts its other users too) and of the bench itself. At the end the bench checks
    nothing was lost or duplicated (``call_events`` rows = published events, at their sequences).

(ii) catch-up: ``--calls`` concurrent calls at a call's pace (``--call-rate`` events/s each), the
    recorder reaching PostgreSQL through a TcpGate. After ``--warmup`` s the gate closes (the live
    connection is cut, new ones refused) for ``--outage`` s, then opens. Reported: the Postgres
    consumer's backlog when PostgreSQL returns (JetStream: not delivered + not acked), the time until
    the recorder has reconnected (its back-off, ``store_retry_max_s``, is at its maximum by then), and
    the time until every event published before the return is committed (``caught up``).

    .venv/bin/python bench/bench_recorder.py [--rate 100 400] [--duration 20] [--calls 50] [--outage 30]
        [--recorders 1] [--batch-max N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis

from bench.phone_load import machine_busy_seconds
from bench.recorder_load import (
    CallTraffic,
    Published,
    RecorderProcess,
    consumer_backlogs,
    recorder_env,
    wait_caught_up,
)
from voiceplatform.bus.nats import NatsBus
from voiceplatform_devstack.devinfra import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, TcpGate, port_open

# ---- infrastructure ---------------------------------------------------------------------------------


@dataclass
class Infra:
    nats_url: str
    postgres_dsn: str
    redis_url: str
    servers: list[EmbeddedNats | EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def start_infra(workdir: Path, postgres_dsn: str | None, redis_url: str | None) -> Infra:
    """A private NATS; the given or loopback PostgreSQL and Redis, else embedded ones."""
    nats_server = EmbeddedNats.start(workdir / "nats")
    infra = Infra(nats_server.url, "", "", [nats_server])
    if postgres_dsn:
        infra.postgres_dsn = postgres_dsn
    elif port_open("127.0.0.1", 5432):
        infra.postgres_dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        pg = EmbeddedPostgres.start(workdir / "postgres")
        infra.servers.append(pg)
        infra.postgres_dsn = pg.dsn
    if redis_url:
        infra.redis_url = redis_url
    elif port_open("127.0.0.1", 6379):
        infra.redis_url = "redis://127.0.0.1:6379/15"
    else:
        embedded_redis = EmbeddedRedis.start(workdir / "redis")
        infra.servers.append(embedded_redis)
        infra.redis_url = embedded_redis.url
    return infra


class GateThread:
    """A TcpGate served by an event loop in a thread of its own, so its proxying never waits for the
    bench's loop (publishing, polling)."""

    def __init__(self, url: str, default_port: int) -> None:
        self.gate = TcpGate.in_front_of(url, default_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-gate", daemon=True)
        self._thread.start()

    async def open(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.gate.open(), self._loop))

    async def close(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.gate.close(), self._loop))

    async def shutdown(self) -> None:
        await self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@dataclass
class Run:
    """One recorder run: its names, its process, and the clients the bench watches it with."""

    infra: Infra
    workdir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    proc: RecorderProcess | None = None
    others: list[RecorderProcess] = field(default_factory=list)  # more instances on the same consumers
    bus: NatsBus | None = None
    pg: asyncpg.Connection | None = None
    redis: aioredis.Redis | None = None

    @property
    def schema(self) -> str:
        return f"bench_rec_{self.tag}"

    @property
    def stream(self) -> str:
        return f"BENCH_REC_{self.tag.upper()}"

    @property
    def prefix(self) -> str:
        return f"bench-{self.tag}"

    async def start(self, postgres_dsn: str | None = None, recorders: int = 1, **settings: object) -> None:
        env = recorder_env(
            self.infra.nats_url, postgres_dsn or self.infra.postgres_dsn, self.infra.redis_url, self.schema,
            self.stream, call_logs_dir=self.workdir / "call_logs", **settings,
        )  # fmt: skip
        self.proc = RecorderProcess(env, self.workdir)
        self.others = [RecorderProcess(env, self.workdir, f"recorder-{n}") for n in range(2, recorders + 1)]
        for proc in (self.proc, *self.others):
            await proc.start()
        for proc in (self.proc, *self.others):
            await proc.wait_stores()
        self.bus = await NatsBus.connect(self.infra.nats_url, "bench-gateway")
        self.pg = await asyncpg.connect(self.infra.postgres_dsn, server_settings={"search_path": self.schema})
        self.redis = aioredis.from_url(self.infra.redis_url)

    async def close(self) -> None:
        for proc in self.others:
            await proc.stop()
        if self.proc is not None:
            await self.proc.stop()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.jetstream().delete_stream(self.stream)
                await self.bus.jetstream().delete_stream(f"{self.stream}_PARKED")
            await self.bus.close()
        if self.pg is not None:
            await self.pg.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            await self.pg.close()
        if self.redis is not None:
            async for key in self.redis.scan_iter(match=f"call:{self.prefix}-*"):
                await self.redis.delete(key)
            await self.redis.aclose()

    def cpu_seconds(self) -> float:
        return sum(proc.cpu_seconds() for proc in (self.proc, *self.others) if proc is not None)

    async def check_exact(self, published: list[Published]) -> None:
        """``call_events`` holds the published events, each once, at the sequence it was published at."""
        assert self.pg is not None
        rows = await self.pg.fetch("SELECT seq, call_id, type, turn_id FROM call_events ORDER BY seq")
        stored = [(r["seq"], r["call_id"], r["type"], r["turn_id"]) for r in rows]
        sent = [(k, p.call_id, p.type, p.turn_id) for k, p in enumerate(published, start=1)]
        if stored != sent:
            missing, extra = len(set(sent) - set(stored)), len(stored) - len(set(stored) & set(sent))
            raise AssertionError(
                f"call_events differs from what was published: {missing} missing, {extra} extra"
            )


# ---- (i) sustained load ------------------------------------------------------------------------------

# the highest sequence committed among the calls named: one index probe (primary key) per call
_MAX_SEQ = """
SELECT max(last.seq) FROM unnest($1::text[]) AS c(call_id),
    LATERAL (SELECT seq FROM call_events e WHERE e.call_id = c.call_id ORDER BY seq DESC LIMIT 1) AS last
"""


WINDOW = 64  # outstanding events whose calls a watcher reads per poll


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


SERVERS = ("nats-server", "postgres", "redis-server")  # by process name, whoever started them


def servers_cpu_seconds() -> dict[str, float]:
    """User + system CPU so far of every process of each server (a shared PostgreSQL or Redis counts
    what other users of it do too), and of this bench process."""
    found = dict.fromkeys(SERVERS, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().split(" (", 1)[1].rsplit(") ", 1)
        except (OSError, IndexError, ValueError):
            continue
        if name in found:
            values = fields.split()
            found[name] += (int(values[11]) + int(values[12])) / tick
    usage = os.times()
    found["bench"] = usage.user + usage.system
    return found


async def watch_postgres(
    pg: asyncpg.Connection, traffic: CallTraffic, points: list[tuple[float, int]], poll_s: float
) -> None:
    """Append (moment, highest committed sequence) each time it grows; runs until cancelled.

    Any committed sequence shows every earlier one committed, so the calls of the next outstanding
    events are enough to follow the front (their latest events are near it); probing every call
    with events outstanding loaded PostgreSQL and this process as much as the recorder did."""
    seen = 0
    while True:
        outstanding = list({p.call_id for p in traffic.published[seen : seen + WINDOW]})
        if outstanding:
            top = await pg.fetchval(_MAX_SEQ, outstanding)
            if top is not None and top > seen:
                seen = int(top)
                points.append((time.perf_counter(), seen))
        await asyncio.sleep(poll_s)


_STATUS_RANK = {None: 0, b"active": 1, b"ended": 2}


async def watch_redis(
    client: aioredis.Redis, traffic: CallTraffic, points: list[tuple[float, int]], poll_s: float
) -> None:
    """Append (moment, highest sequence written) each time it grows; runs until cancelled.

    Each event but control.interrupt leaves a mark on its call in Redis: the history grows (asr.final,
    llm.done), the turn count grows (turn.metrics), the status is set (call.started, call.ended).
    The marks each call must show once an event is written are known from what was published; the
    next outstanding events' calls are read in one pipeline per poll.
    """
    marks: list[tuple[str, tuple[int, int, int]] | None] = []  # per sequence - 1
    state: dict[str, list[int]] = {}  # per call: history entries, turns, status rank so far
    seen = 0
    while True:
        for p in traffic.published[len(marks) :]:
            mark = state.setdefault(p.call_id, [0, 0, 0])
            if p.type in ("asr.final", "llm.done", "turn.metrics"):
                mark[1 if p.type == "turn.metrics" else 0] += 1
            elif p.type in ("call.started", "call.ended"):
                mark[2] = max(mark[2], 1 if p.type == "call.started" else 2)
            marks.append((p.call_id, (mark[0], mark[1], mark[2])) if p.type != "control.interrupt" else None)
        window = [(seq, marks[seq - 1]) for seq in range(seen + 1, min(len(marks), seen + WINDOW) + 1)]
        calls = sorted({m[0] for _, m in window if m is not None})
        if calls:
            async with client.pipeline(transaction=False) as pipe:
                for call_id in calls:
                    pipe.llen(f"call:{call_id}:history")
                    pipe.hmget(f"call:{call_id}", "turns", "status")
                replies = await pipe.execute()
            now = time.perf_counter()
            shown = {
                call_id: (
                    int(replies[2 * i]),
                    int(replies[2 * i + 1][0] or 0),
                    _STATUS_RANK[replies[2 * i + 1][1]],
                )
                for i, call_id in enumerate(calls)
            }
            top = seen
            for seq, due in window:
                if due is not None and all(
                    got >= want for got, want in zip(shown[due[0]], due[1], strict=True)
                ):
                    top = seq  # written in stream order: every earlier event is written too
            if top > seen:
                seen = top
                points.append((now, seen))
        await asyncio.sleep(poll_s)


def first_seen(points: list[tuple[float, int]], n: int) -> list[float]:
    """Per sequence 1..n: the first poll that showed it (or a later one) stored."""
    moments, seq = [float("inf")] * n, 0
    for at, top in points:
        while seq < min(top, n):
            moments[seq] = at
            seq += 1
    return moments


@dataclass
class Sustained:
    offered: float
    events: int
    calls: int
    persisted_per_s: float
    cpu_s: float  # the recorder process's, from the first publish until caught up
    wall_s: float
    machine_s: float  # busy CPU of the whole machine over the same span (every core, every process)
    servers_s: dict[str, float]  # each server's and this bench's CPU over the same span
    load: float  # 1-minute load average at the end
    lag_ms: list[float]
    pg_lag_ms: list[float]
    redis_lag_ms: list[float]
    publish_ms: list[float]


async def sustained(
    infra: Infra,
    workdir: Path,
    rate: float,
    duration: float,
    calls: int,
    turns: int,
    poll_ms: float,
    recorders: int = 1,
    batch_max: int | None = None,
) -> Sustained:
    run = Run(infra, workdir / f"sustained-{rate:g}")
    try:
        await run.start(recorders=recorders, **({"batch_max": batch_max} if batch_max else {}))
        assert run.bus is not None and run.pg is not None and run.redis is not None and run.proc is not None
        traffic = CallTraffic(run.bus, run.prefix, calls, turns, rate, spread=True)
        pg_points: list[tuple[float, int]] = []
        redis_points: list[tuple[float, int]] = []
        watchers = [
            asyncio.create_task(watch_postgres(run.pg, traffic, pg_points, poll_ms / 1000)),
            asyncio.create_task(watch_redis(run.redis, traffic, redis_points, poll_ms / 1000)),
        ]
        cpu_before, started = run.cpu_seconds(), time.perf_counter()
        machine_before, servers_before = machine_busy_seconds(), servers_cpu_seconds()
        publishing = asyncio.create_task(traffic.run())
        await asyncio.sleep(duration)
        traffic.stop_new_calls()
        await publishing
        n = len(traffic.published)
        await wait_caught_up(run.bus.jetstream(), run.stream, n, 4, within_s=120 + n / 100)
        cpu_s, wall_s = run.cpu_seconds() - cpu_before, time.perf_counter() - started
        machine_s = machine_busy_seconds() - machine_before
        servers_s = {name: s - servers_before[name] for name, s in servers_cpu_seconds().items()}
        load = os.getloadavg()[0]
        deadline = time.monotonic() + 10  # the watchers' last observations
        while (
            time.monotonic() < deadline and min(p[-1][1] if p else 0 for p in (pg_points, redis_points)) < n
        ):
            await asyncio.sleep(0.05)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await run.check_exact(traffic.published)

        pg_at, redis_at = first_seen(pg_points, n), first_seen(redis_points, n)
        sent = [p.at for p in traffic.published]
        both = [max(a, b) for a, b in zip(pg_at, redis_at, strict=True)]

        def lags(seen: list[float]) -> list[float]:
            return [(at - s) * 1000 for at, s in zip(seen, sent, strict=True)]

        return Sustained(
            rate, n, len(traffic.calls), n / (max(both) - sent[0]), cpu_s, wall_s, machine_s, servers_s, load,
            lags(both), lags(pg_at), lags(redis_at), [p.publish_s * 1000 for p in traffic.published],
        )  # fmt: skip
    finally:
        await run.close()


def sustained_table(results: list[Sustained]) -> str:
    def cols(values: list[float]) -> str:
        return " ".join(f"{percentile(values, q):7.1f}" for q in (50, 95, 99)) + f" {max(values):7.1f}"

    lines = [
        "(i) sustained load: publish -> committed in PostgreSQL AND written in Redis; lags in ms",
        f"{'offered/s':>9} {'events':>6} {'calls':>5} {'persisted/s':>11} | {'p50':>7} {'p95':>7} {'p99':>7}"
        f" {'max':>7} | {'pg p50':>7} {'pg p99':>7} | {'redis p50':>9} {'redis p99':>9} | "
        f"{'p50 1st/last third':>18} | recorder CPU",
    ]
    for r in results:
        third = max(1, len(r.lag_ms) // 3)
        early, late = percentile(r.lag_ms[:third], 50), percentile(r.lag_ms[-third:], 50)
        lines.append(
            f"{r.offered:9.0f} {r.events:6d} {r.calls:5d} {r.persisted_per_s:11.0f} | {cols(r.lag_ms)} | "
            f"{percentile(r.pg_lag_ms, 50):7.1f} {percentile(r.pg_lag_ms, 99):7.1f} | "
            f"{percentile(r.redis_lag_ms, 50):9.1f} {percentile(r.redis_lag_ms, 99):9.1f} | "
            f"{early:8.1f} /{late:8.1f} | {100 * r.cpu_s / r.wall_s:3.0f}% "
            f"({1000 * r.cpu_s / r.events:.1f} ms/event)"
        )
    for r in results:
        servers = ", ".join(f"{name} {100 * s / r.wall_s:.0f}%" for name, s in r.servers_s.items())
        lines.append(
            f"{r.offered:9.0f}/s: machine {100 * r.machine_s / r.wall_s:.0f}% busy of "
            f"{100 * (os.cpu_count() or 1)}% (load average {r.load:.1f}); recorder "
            f"{100 * r.cpu_s / r.wall_s:.0f}%, {servers}"
        )
    publish = [ms for r in results for ms in r.publish_ms]
    lines.append(
        f"publish call (the gateway's cost): p50 {percentile(publish, 50):.3f} ms, "
        f"p99 {percentile(publish, 99):.3f} ms, max {max(publish):.3f} ms"
    )
    return "\n".join(lines)


# ---- (ii) catch-up after a PostgreSQL outage ---------------------------------------------------------


@dataclass
class CatchUp:
    calls: int
    rate: float
    outage_s: float
    published_during: int
    backlog: int
    reconnect_s: float
    caught_up_s: float
    backlog_zero_s: float | None
    events: int


async def catch_up(
    infra: Infra, workdir: Path, calls: int, call_rate: float, turns: int, warmup: float, outage: float
) -> CatchUp:
    run = Run(infra, workdir / "catch-up")
    gate = GateThread(infra.postgres_dsn, 5432)
    try:
        await gate.open()
        await run.start(postgres_dsn=gate.gate.url_via_gate(infra.postgres_dsn))
        assert run.bus is not None and run.pg is not None and run.proc is not None
        js = run.bus.jetstream()
        traffic = CallTraffic(run.bus, run.prefix, calls, turns, calls * call_rate, spread=True)
        publishing = asyncio.create_task(traffic.run())
        await asyncio.sleep(warmup)
        await gate.close()
        at_close = len(traffic.published)
        await asyncio.sleep(outage)
        await run.bus.client.flush()
        at_return = len(traffic.published)
        backlog = (await consumer_backlogs(js, run.stream))["recorder_postgres"]
        await gate.open()
        returned = time.monotonic()
        reconnect_s = caught_up_s = 0.0
        backlog_zero_s: float | None = None
        while not caught_up_s or (backlog_zero_s is None and time.monotonic() - returned < 60):
            now = time.monotonic() - returned
            if not reconnect_s and (await run.proc.store_states()).get("postgres") == "up":
                reconnect_s = now
            if not caught_up_s:
                stored = await run.pg.fetchval("SELECT count(*) FROM call_events WHERE seq <= $1", at_return)
                caught_up_s = now if stored == at_return else 0.0
            if backlog_zero_s is None and (await consumer_backlogs(js, run.stream))["recorder_postgres"] == 0:
                backlog_zero_s = now
            if now > 300:
                raise AssertionError("PostgreSQL did not catch up in 5 minutes")
            await asyncio.sleep(0.02)
        traffic.stop_new_calls()
        await publishing
        n = len(traffic.published)
        await wait_caught_up(js, run.stream, n, 4, within_s=120)
        await run.check_exact(traffic.published)
        return CatchUp(
            calls, calls * call_rate, outage, at_return - at_close, backlog, reconnect_s or caught_up_s,
            caught_up_s, backlog_zero_s, n,
        )  # fmt: skip
    finally:
        await run.close()
        await gate.shutdown()


def catch_up_table(r: CatchUp) -> str:
    zero = f"{r.backlog_zero_s:.2f} s" if r.backlog_zero_s is not None else "not within 60 s"
    drain = r.caught_up_s - r.reconnect_s
    rate = f"{r.backlog / drain:.0f} events/s" if drain > 0 else "-"
    return "\n".join(
        [
            f"(ii) catch-up after a {r.outage_s:g} s PostgreSQL outage, {r.calls} concurrent calls "
            f"({r.rate:g} events/s offered, {r.events} events in all)",
            f"  published during the outage     {r.published_during} events",
            f"  Postgres backlog at its return  {r.backlog} events (JetStream: not delivered + not acked)",
            f"  recorder reconnected after      {r.reconnect_s:.2f} s (its retry back-off: up to 5 s)",
            f"  caught up after                 {r.caught_up_s:.2f} s (every event published before the "
            f"return committed); drain {rate}",
            f"  consumer backlog first 0 after  {zero} (live calls go on meanwhile)",
        ]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, nargs="+", default=[100.0, 400.0], help="(i) events/s offered")
    parser.add_argument("--duration", type=float, default=20.0, help="(i) seconds of load per rate")
    parser.add_argument("--calls", type=int, default=50, help="concurrent simulated calls")
    parser.add_argument("--turns", type=int, default=6, help="turns per simulated call")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="(i) PostgreSQL poll interval")
    parser.add_argument("--call-rate", type=float, default=2.0, help="(ii) events/s of one call")
    parser.add_argument("--warmup", type=float, default=5.0, help="(ii) seconds before the outage")
    parser.add_argument("--outage", type=float, default=30.0, help="(ii) seconds PostgreSQL is away")
    parser.add_argument("--recorders", type=int, default=1, help="(i) recorder processes sharing the work")
    parser.add_argument("--batch-max", type=int, help="(i) the recorders' VP_BATCH_MAX (default: theirs)")
    parser.add_argument("--only", choices=("sustained", "catch-up"), help="run one part only")
    parser.add_argument("--postgres-dsn", default=os.environ.get("POSTGRES_DSN"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vp-bench-recorder-") as tmp:
        workdir = Path(tmp)
        infra = start_infra(workdir, args.postgres_dsn, args.redis_url)
        try:
            where = "embedded" if infra.servers[1:] else "loopback"
            print(f"NATS {infra.nats_url} (private); PostgreSQL and Redis: {where}", flush=True)
            if args.only != "catch-up":
                results = []
                for rate in args.rate:
                    results.append(
                        await sustained(
                            infra,
                            workdir,
                            rate,
                            args.duration,
                            args.calls,
                            args.turns,
                            args.poll_ms,
                            args.recorders,
                            args.batch_max,
                        )
                    )
                print(sustained_table(results), flush=True)
            if args.only != "sustained":
                result = await catch_up(
                    infra, workdir, args.calls, args.call_rate, args.turns, args.warmup, args.outage
                )
                print(catch_up_table(result), flush=True)
        finally:
            infra.stop()


if __name__ == "__main__":
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    asyncio.run(main())
