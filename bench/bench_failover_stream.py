"""Failover of the streaming owners (vad, asr): the gap after a kill -9 mid-utterance, turns lost,
and how late heartbeats arrive on this machine.

Two worker processes per role on a private NATS server, the gateway's call session in this process,
a caller whose frames name themselves (the test-only ``span`` ASR engine reports which speech
frames a transcript covers). Each run: a call, one 3 s utterance, the role's owner killed 1.5 s in;
the killed worker is restarted for the next run.

- gap: kill -> the call re-assigned with the caller audio replayed (the new owner has it all)
- lost: runs whose utterance did not come out as one turn with its whole text (must be 0)
- heartbeats: inter-arrival of every worker's heartbeats over the bench (interval 0.2 s); with
  ``--burn N``, N processes keep the CPU busy meanwhile (a loaded machine)

    .venv/bin/python bench/bench_failover_stream.py [--runs 20] [--roles vad,asr] [--burn 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.failover.span_asr import span_text  # noqa: E402
from tests.failover.stack import (  # noqa: E402
    Beats,
    Gateway,
    Workers,
    caller_turns,
    speak,
    wait_until,
    watch_heartbeats,
    write_robot,
)
from voiceplatform.devinfra import EmbeddedNats  # noqa: E402
from voiceplatform.logging import configure_logging  # noqa: E402
from voiceplatform.runtime.ownership import HEARTBEAT_INTERVAL_S, OWNER_TIMEOUT_S  # noqa: E402

LEAD, SPEECH, TAIL = 25, 150, 60
FAULT_AT = LEAD + SPEECH // 2
INSTANCES = {"vad": ["vad-a", "vad-b"], "asr": ["asr-a", "asr-b"]}


def burn(stop_at: float) -> None:
    import numpy as np

    a = np.random.default_rng(0).random((300, 300))
    while time.time() < stop_at:
        a = a @ a
        a /= a.max()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_run(
    gateway: Gateway, workers: Workers, beats: Beats, robots: Path, role: str
) -> tuple[float, bool]:
    session = await gateway.call(robots)
    await wait_until(lambda: {"vad", "asr"} <= set(session.owners), 10, "owners")
    victim = session.owners[role]
    killed: list[float] = []
    moved: list[float] = []

    async def on_frame(i: int) -> None:
        if i == FAULT_AT:
            killed.append(time.monotonic())
            workers.kill(victim)
            beats.times.pop(victim, None)  # its restart's first beat is no late beat
        if killed and not moved and session.owners.get(role) not in (None, victim):
            moved.append(time.monotonic())

    first = await speak(session, [LEAD <= i < LEAD + SPEECH for i in range(LEAD + SPEECH + TAIL)], on_frame)
    await wait_until(lambda: session.owners.get(role) not in (None, victim), 10, "re-assignment")
    if not moved:
        moved.append(time.monotonic())
    try:
        await wait_until(lambda: any(t.user_text for t in caller_turns(session)), 15, "transcript")
        await asyncio.sleep(0.3)
    except AssertionError:
        pass
    turns = caller_turns(session)
    whole = len(turns) == 1 and turns[0].user_text == span_text(first + LEAD, SPEECH)
    await session.end("bench")
    workers.start(role, victim)
    return moved[0] - killed[0], whole


async def main(args: argparse.Namespace) -> None:
    configure_logging("bench-failover", "ERROR", json=False)
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    nats = EmbeddedNats.start(work / "nats")
    write_robot(work / "robots")
    workers = Workers(nats.url, work / "robots", work)
    burners: list[multiprocessing.Process] = []
    gateway = await Gateway.connect(nats.url)
    try:
        for role, ids in INSTANCES.items():
            for instance in ids:
                workers.start(role, instance)
        beats = await watch_heartbeats(gateway.bus)
        every = [i for ids in INSTANCES.values() for i in ids]
        await wait_until(lambda: beats.alive(every), 60, "workers")
        stop_at = time.time() + 3600
        burners = [
            multiprocessing.Process(target=burn, args=(stop_at,), daemon=True) for _ in range(args.burn)
        ]
        for p in burners:
            p.start()
        beats.times.clear()
        print(
            f"heartbeat {HEARTBEAT_INTERVAL_S * 1000:.0f} ms, owner timeout {OWNER_TIMEOUT_S * 1000:.0f} ms, "
            f"{args.runs} kill -9 per role, {args.burn} CPU burners"
        )
        for role in args.roles.split(","):
            gaps: list[float] = []
            lost = 0
            for _ in range(args.runs):
                gap, whole = await one_run(gateway, workers, beats, work / "robots", role)
                gaps.append(gap * 1000)
                lost += not whole
                await wait_until(lambda: beats.alive(every), 60, "restarted worker")
                await asyncio.sleep(0.3)
            print(
                f"{role}: failover gap p50 {statistics.median(gaps):.0f} ms, p95 {pct(gaps, 0.95):.0f} ms, "
                f"max {max(gaps):.0f} ms; turns lost {lost}/{args.runs}"
            )
        late = [g * 1000 for g in beats.gaps()]
        if late:
            print(
                f"heartbeat inter-arrival: p50 {statistics.median(late):.0f} ms, "
                f"p99 {pct(late, 0.99):.0f} ms, max {max(late):.0f} ms over {len(late)} beats"
            )
    finally:
        for p in burners:
            p.terminate()
        workers.stop_all()
        await gateway.close()
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--roles", default="vad,asr")
    parser.add_argument("--burn", type=int, default=0, help="CPU-burning processes during the bench")
    asyncio.run(main(parser.parse_args()))
