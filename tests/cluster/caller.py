"""Calls from the caller host: ``ip netns exec <caller> python -m tests.cluster.caller URL --calls N``.

Holds N conversations at once (tests/chaos/dialogue.py, one reply at a time), started ``--stagger``
seconds apart, and writes JSON lines on stdout as things happen, so the test can act at a moment
of a call: ``{"call": k, "call_id": ..., "turn": i, "moment": "speaking"|"spoken"}``, then one
``{"call": k, "result": {...}}`` per call at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback

import numpy as np

from tests.chaos.dialogue import RATE, Dialogue, hold_dialogue
from voiceplatform.audio import Int16Array


def speech(seed: int, seconds: float = 1.0) -> Int16Array:
    """A tone with noise: loud enough for the energy VAD; the instant ASR ignores what it says."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    samples = np.sin(2 * np.pi * 220 * t) * 4000 + rng.normal(0, 300, t.size)
    return samples.astype(np.int16)


def emit(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def one_call(url: str, robot: str, index: int, turns: int, delay_s: float) -> None:
    await asyncio.sleep(delay_s)

    async def hook(dialogue: Dialogue, turn: int, moment: str) -> None:
        emit({"call": index, "call_id": dialogue.call_id, "turn": turn, "moment": moment})

    try:
        dialogue = await hold_dialogue(url, robot, [speech(index * 100 + i) for i in range(turns)], hook=hook)
    except Exception as exc:  # the test reports it with the others
        error = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        emit({"call": index, "result": error})
        return
    outcomes = [m.get("outcome") for t in dialogue.turns for m in t.metrics]
    emit(
        {
            "call": index,
            "result": {
                "call_id": dialogue.call_id,
                "answered": sum(1 for t in dialogue.turns if t.reply_audio_at is not None),
                "gaps_s": [t.gap_s for t in dialogue.turns],
                "reply_at_s": [
                    None if t.reply_audio_at is None else round(t.reply_audio_at, 3) for t in dialogue.turns
                ],
                "outcomes": outcomes,
                "end_reason": dialogue.end_reason,
            },
        }
    )


async def main_async(args: argparse.Namespace) -> None:
    await asyncio.gather(
        *(one_call(args.url, args.robot, k, args.turns, k * args.stagger) for k in range(args.calls))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--robot", default="bench_instant")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--stagger", type=float, default=0.5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
