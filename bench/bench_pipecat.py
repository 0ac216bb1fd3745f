"""The same instant-engine calls through this platform and through pipecat, side by side.

pipecat is installed by this script into its own virtual environment (``.bench/pipecat-<version>``,
outside the project's venv; it is never a dependency of the project), then
``bench/pipecat_side/instant_calls.py`` runs there: one pipecat pipeline per call, all in one process.
This platform's side is ``bench/bench_platform.py --layout inproc``: every service in one process,
talking over a private NATS server. Both sides use the same caller (``bench/caller_signal.py``: 1 s of
tone, then quiet until the reply has played), the same instant engines (fixed transcript, fixed
reply, 200 ms of tone) and the same 0.5 s VAD hang-over.

Per concurrency level it prints, for each side, the overhead (last caller frame → first reply frame,
minus the hang-over) p50/p95/p99, the reply frame lag p99 (a level is held when it is under 20 ms),
process CPU per call-minute, and the ratio pipecat / platform.

    .venv/bin/python bench/bench_pipecat.py [--levels 1 10 25 50] [--turns 5] [--pipecat 1.14.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.platform_report import LevelResult, percentile, trio

ROOT = Path(__file__).resolve().parent.parent
PIPECAT_SIDE = ROOT / "bench" / "pipecat_side" / "instant_calls.py"
HELD_LAG_MS = 20.0


def pipecat_python(version: str, venv_dir: Path) -> Path:
    """Python of a venv holding pipecat-ai==version, made on first use."""
    python = venv_dir / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == version:
            return python
    print(f"installing pipecat-ai=={version} into {venv_dir} (once)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"pipecat-ai=={version}", "numpy"], check=True)
    return python


def run_pipecat(python: Path, levels: list[int], turns: int, min_turns: int) -> list[LevelResult]:
    args = [str(python), str(PIPECAT_SIDE), "--levels", *map(str, levels), "--turns", str(turns)]
    args += ["--min-turns", str(min_turns)]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if done.returncode != 0:
        raise RuntimeError(f"pipecat side failed ({done.returncode}): {done.stderr[-2000:]}")
    results = []
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue
        raw = json.loads(line)
        level = LevelResult(raw["concurrency"], 0)
        level.overhead_ms = raw["overhead_ms"]
        level.frame_lag_ms = raw["frame_lag_ms"]
        level.caller_lag_ms = raw["caller_lag_ms"]
        level.errors = raw["errors"]
        level.call_seconds = raw["call_seconds"]
        level.cpu_seconds = raw["cpu_seconds"]
        results.append(level)
    return results


def run_platform(levels: list[int], turns: int, min_turns: int) -> list[LevelResult]:
    from bench.bench_platform import run_benchmark

    return asyncio.run(run_benchmark(levels, turns, layout="inproc", min_turns=min_turns))


def run_platform_quietly(levels: list[int], turns: int, min_turns: int) -> list[LevelResult]:
    """The in-process services log at INFO as in production: into nowhere, not into the table."""
    from voiceplatform.logging import configure_logging

    configure_logging("bench", "INFO", json=True)
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        try:
            return run_platform(levels, turns, min_turns)
        finally:
            sys.stderr = sys.__stderr__


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b > 0 else "-"


def lag_mark(lag_ms: float) -> str:
    return f"{lag_ms:.0f}{'' if lag_ms < HELD_LAG_MS else '!'}"


def side_by_side(ours: list[LevelResult], theirs: list[LevelResult]) -> str:
    head = (
        f"{'calls':>5} | {'platform overhead p50/p95/p99':>29} | {'pipecat overhead p50/p95/p99':>28} | "
        f"{'ratio p50':>9} | {'ratio p99':>9} | {'frame lag p99 (platform/pipecat)':>32} | "
        f"{'CPU s per call-min (platform/pipecat)':>37} | errors (platform/pipecat)"
    )
    lines = [head, "-" * len(head)]
    for a, b in zip(ours, theirs, strict=True):
        lag_a, lag_b = percentile(a.frame_lag_ms, 99), percentile(b.frame_lag_ms, 99)
        held = f"{lag_mark(lag_a)} / {lag_mark(lag_b)}"
        cpu = f"{a.per_call_minute(a.cpu_seconds):.2f} / {b.per_call_minute(b.cpu_seconds):.2f}"
        lines.append(
            f"{a.concurrency:>5} | {trio(a.overhead_ms):>29} | {trio(b.overhead_ms):>28} | "
            f"{ratio(percentile(b.overhead_ms, 50), percentile(a.overhead_ms, 50)):>9} | "
            f"{ratio(percentile(b.overhead_ms, 99), percentile(a.overhead_ms, 99)):>9} | {held:>32} | "
            f"{cpu:>37} | {a.errors or '-'} / {b.errors or '-'}"
        )
    lines.append("('!': frame lag p99 over 20 ms, the level is not held; platform CPU excludes NATS's own)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 25, 50])
    parser.add_argument("--turns", type=int, default=5, help="turns per call (at least 15 per level)")
    parser.add_argument("--min-turns", type=int, default=15, help="turns per level at least")
    parser.add_argument("--pipecat", default="1.14.0", help="pipecat-ai version to compare with")
    parser.add_argument("--venv", type=Path, default=None, help="pipecat's venv (default .bench/pipecat-<v>)")
    args = parser.parse_args()
    python = pipecat_python(args.pipecat, args.venv or ROOT / ".bench" / f"pipecat-{args.pipecat}")
    theirs = run_pipecat(python, args.levels, args.turns, args.min_turns)
    ours = run_platform_quietly(args.levels, args.turns, args.min_turns)
    print(
        f"pipecat-ai {args.pipecat} vs this platform, instant engines, one process each, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    print(side_by_side(ours, theirs))


if __name__ == "__main__":
    main()
