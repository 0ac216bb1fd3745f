"""The platform on network-namespace hosts with a 3-node NATS cluster (tests/cluster, root only).

Prints, with the instant engines (bench/instant_engines.py) so the time is the platform's own:

- ``overhead``: end of the caller's utterance → first robot audio, minus the VAD hang-over, per turn,
  on the cluster (gateway, workers, NATS nodes and caller on different hosts; streams and KV at
  three replicas) and on one host (one NATS server, every service in one namespace);
- ``node kill``: kill -9 of the NATS node leading VP_CALL_EVENTS mid-call: time until the stream
  has a new leader, and the reply gap of the turn in flight;
- ``host cut``: the worker host holding a call's VAD loses its cable mid-call: calls kept (every
  reply played and the call recorded whole) out of those placed.

Run as root: ``.venv/bin/python bench/bench_cluster.py [--turns 4]`` (PostgreSQL and Redis on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nats
import numpy as np

from tests.cluster.calls import CallBatch, place_calls, unrecorded
from tests.cluster.netns import netns_available
from tests.cluster.platform import CLUSTER, ONE_HOST, SILENCE_FRAMES, ClusterPlatform, launch
from voiceplatform.bus.streams import CALL_EVENTS_STREAM

HANGOVER_S = SILENCE_FRAMES * 0.02


def percentiles(label: str, values_ms: list[float]) -> None:
    if not values_ms:
        print(f"{label}: no samples")
        return
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    print(f"{label}: n={len(values_ms)} p50={p50:.0f} ms p95={p95:.0f} ms p99={p99:.0f} ms")


def overheads_ms(batch: CallBatch) -> list[float]:
    gaps = [g for r in batch.results.values() for g in r.get("gaps_s", []) if g is not None]
    return [(g - HANGOVER_S) * 1000 for g in gaps]


async def _quiet(exc: Exception) -> None:
    """The probe asks dead nodes on purpose: their refusals are expected."""


async def stream_leader(platform: ClusterPlatform, timeout_s: float = 0.5) -> str:
    live = [n.url for n in platform.nats.nodes if n.running]
    nc = await nats.connect(
        servers=live, allow_reconnect=False, error_cb=_quiet, **platform.credentials.admin_options()
    )
    try:
        info = await nc.jetstream(timeout=timeout_s).stream_info(CALL_EVENTS_STREAM)
        return str(info.cluster.leader if info.cluster else "")
    finally:
        await nc.close()


async def node_kill(platform: ClusterPlatform, turns: int) -> None:
    leader = await stream_leader(platform)
    node = platform.nats.by_name(leader)
    killed_at: list[float] = []
    recovered: list[float] = []

    async def watch() -> None:
        while True:
            try:
                if (await stream_leader(platform)) not in ("", leader):
                    recovered.append(time.monotonic())
                    return
            except Exception:  # no leader yet, or the node we asked is the dead one
                pass
            await asyncio.sleep(0.05)

    async def fault(index: int, call_id: str, turn: int, moment: str) -> None:
        if (index, turn, moment) == (0, 1, "speaking"):
            node.kill()
            killed_at.append(time.monotonic())
            await watch()

    batch = await place_calls(platform, 2, turns, fault)
    if killed_at and recovered:
        print(f"node kill: VP_CALL_EVENTS had a new leader {recovered[0] - killed_at[0]:.2f} s after kill -9")
    gaps = [r["gaps_s"][1] for r in batch.results.values() if len(r.get("gaps_s", [])) > 1]
    print(f"node kill: reply gap of the turn in flight (s): {[round(g, 2) for g in gaps if g is not None]}")
    print(f"node kill: calls with a failure: {len(batch.failures(turns))}/2")
    node.start()
    await asyncio.to_thread(platform.nats.wait_healthy)


async def host_cut(platform: ClusterPlatform, calls: int, turns: int, dsn: str) -> None:
    cut: list[str] = []

    async def fault(index: int, call_id: str, turn: int, moment: str) -> None:
        if (index, turn, moment) == (0, 1, "speaking"):
            holders = platform.hosts_with(call_id, "vad")
            if holders:
                platform.host(holders[0]).cut()
                cut.append(holders[0])

    try:
        batch = await place_calls(platform, calls, turns, fault)
    finally:
        for name in cut:
            platform.host(name).plug()
    failed = {line.split(":")[0] for line in batch.failures(turns)}
    lost = await unrecorded(dsn, batch, turns)
    kept = calls - len(failed) - len(lost)
    gaps = [r["gaps_s"][1] for r in batch.results.values() if len(r.get("gaps_s", [])) > 1]
    where = cut or "nothing cut"
    print(f"host cut ({where}): calls kept {kept}/{calls} (failed {len(failed)}, unrecorded {len(lost)})")
    print(f"host cut: reply gap of the turn in flight (s): {[round(g, 2) for g in gaps if g is not None]}")


async def run(turns: int, dsn: str, redis: str) -> None:
    for name, layout, nodes in (("one host", ONE_HOST, 1), ("cluster", CLUSTER, 3)):
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="vp-bench-cluster-"))
        try:
            platform = await asyncio.to_thread(launch, workdir, dsn, redis, layout, nodes)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        try:
            print(f"{name}: up in {time.monotonic() - started:.0f} s", flush=True)
            batch = await place_calls(platform, 2, turns)
            percentiles(f"{name}: overhead per turn", overheads_ms(batch))
            if nodes > 1:
                await node_kill(platform, 3)
                await host_cut(platform, 3, 3, dsn)
        finally:
            await asyncio.to_thread(platform.stop)
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    reason = netns_available()
    if reason:
        sys.exit(f"cannot build namespace hosts: {reason}")
    dsn = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    print(f"VAD hang-over {HANGOVER_S * 1000:.0f} ms subtracted; {os.cpu_count()} cores (shared)")
    asyncio.run(run(args.turns, dsn, redis))


if __name__ == "__main__":
    main()
