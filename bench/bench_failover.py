"""Failover gap per worker type: what a caller waits when the instance serving it dies or hangs.

The platform runs as in production (every service a process, two instances of each worker, real
engines of the pipeline_russian robot, a private NATS, the Postgres and Redis of the environment or
loopback). Each round is one call of two utterances; during the first, the instance that holds the
call (vad, asr: mid-utterance) or works on the turn (prompt-router, llm, tts: as the utterance ends)
is killed (SIGKILL) or frozen (SIGSTOP); then the platform is put back (frozen ones killed, dead ones
restarted). Printed per worker type and fault: the caller's wait from the end of the faulted utterance
to the reply's first audio (p50/p95 over the rounds) next to the same wait without a fault, and the
turns lost (an utterance that got no reply: must be 0).

    .venv/bin/python bench/bench_failover.py [--rounds 5] [--roles vad asr prompt-router llm tts]
        [--faults kill freeze] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.platform import WORKERS, ChaosPlatform, launch
from tests.chaos.scenario import call_with_fault

QUESTIONS = [
    "Здравствуйте! У меня есть собака, что вы можете предложить?",
    "А какие у вас цены, это дорого?",
]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value * 1000:6.0f}"


async def one_round(platform: ChaosPlatform, role: str, how: str) -> dict[str, Any]:
    dialogue, hit = await call_with_fault(platform, role, how, questions=QUESTIONS, fault_turn=0)
    gaps = [t.gap_s for t in dialogue.turns]
    return {"hit": hit, "faulted_gap_s": gaps[0], "after_gap_s": gaps[1] if len(gaps) > 1 else None}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--roles", nargs="+", default=list(WORKERS), choices=list(WORKERS))
    parser.add_argument("--faults", nargs="+", default=["kill", "freeze"], choices=["kill", "freeze"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dsn = os.environ.get("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vp-bench-failover-") as tmp:
        platform = launch(Path(tmp), dsn, redis_url)
        try:
            for role in args.roles:
                for how in args.faults:
                    rounds = []
                    for _ in range(args.rounds):
                        rounds.append(asyncio.run(one_round(platform, role, how)))
                        platform.restore()
                    results[f"{role}/{how}"] = rounds
                    print_row(role, how, rounds, flush=True)
        finally:
            platform.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    lost = sum(1 for rounds in results.values() for r in rounds if r["faulted_gap_s"] is None)
    print(f"turns lost: {lost}")
    return 0


def print_row(role: str, how: str, rounds: list[dict[str, Any]], flush: bool = False) -> None:
    faulted = [r["faulted_gap_s"] for r in rounds if r["faulted_gap_s"] is not None]
    normal = [r["after_gap_s"] for r in rounds if r["after_gap_s"] is not None]
    lost = sum(1 for r in rounds if r["faulted_gap_s"] is None) + sum(
        1 for r in rounds if r["after_gap_s"] is None
    )
    extra = (statistics.median(faulted) - statistics.median(normal)) if faulted and normal else None
    print(
        f"{role:14s} {how:6s} faulted turn p50 {fmt(pct(faulted, 0.5))} p95 {fmt(pct(faulted, 0.95))} ms"
        f" | unfaulted p50 {fmt(pct(normal, 0.5))} ms | added p50 {fmt(extra)} ms"
        f" | lost {lost}/{2 * len(rounds)}",
        flush=flush,
    )


if __name__ == "__main__":
    sys.exit(main())
