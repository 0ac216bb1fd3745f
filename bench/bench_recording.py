"""What recording a call costs the gateway's event loop: the time of each 20 ms frame's work in
``StereoRecording`` (one caller frame, and a robot frame while the robot speaks), including the
writes of settled audio to disk, over simulated calls on a fake clock.

    python -m bench.bench_recording --calls 20 --seconds 60
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from voiceplatform.gateway.recording import StereoRecording


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def one_call(folder: Path, index: int, seconds: int, rate: int, samples: list[float]) -> int:
    clock = Clock()
    rec = StereoRecording(folder / f"call-{index}.wav", rate, clock=clock)
    frame = (np.random.default_rng(index).integers(-3000, 3000, rate // 50, dtype=np.int16)).tobytes()
    for i in range(seconds * 50):
        clock.t = i * 0.02
        started = time.perf_counter()
        rec.caller(frame)
        if (i // 100) % 2:  # the robot speaks every other 2 s, and is cut at the end of each
            rec.robot(frame)
            if i % 100 == 99:
                rec.clear_robot()
        samples.append((time.perf_counter() - started) * 1e6)
    started = time.perf_counter()
    rec.close()
    samples.append((time.perf_counter() - started) * 1e6)
    return (folder / f"call-{index}.wav").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=16000)
    args = parser.parse_args()
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [one_call(Path(tmp), i, args.seconds, args.rate, samples) for i in range(args.calls)]
    q = statistics.quantiles(samples, n=100)
    print(f"{args.calls} calls x {args.seconds} s at {args.rate} Hz, {len(samples)} frames")
    print(f"per frame (us): p50 {q[49]:.1f}  p95 {q[94]:.1f}  p99 {q[98]:.1f}  max {max(samples):.1f}")
    print(f"file: {statistics.mean(sizes) / args.seconds / 1024:.1f} KiB per second of call")


if __name__ == "__main__":
    main()
