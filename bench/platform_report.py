"""Results of the platform-overhead benchmark: per-level samples, percentiles and the printed tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# turn.metrics fields: ms from the VAD's speech end to asr.final, first llm.sentence, first tts.audio
STAGES = ("asr_ms", "llm_first_sentence_ms", "tts_first_audio_ms")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class LevelResult:
    concurrency: int
    turns_planned: int
    v2v_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    frame_lag_ms: list[float] = field(default_factory=list)
    caller_lag_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    call_seconds: float = 0.0
    cpu_seconds: float = 0.0
    nats_cpu_seconds: float = 0.0
    stages: dict[str, list[float]] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def turns(self) -> int:
        return len(self.overhead_ms)

    def per_call_minute(self, seconds: float) -> float:
        return seconds / (self.call_seconds / 60) if self.call_seconds else math.nan


def trio(values: list[float]) -> str:
    return "/".join(f"{percentile(values, q):.0f}" for q in (50, 95, 99))


def format_stages(results: list[LevelResult]) -> str:
    """Where the v2v time goes: each stage's timestamp after the VAD's speech end (gateway view)."""
    head = f"{'calls':>5} | " + " | ".join(f"{stage + ' p50/p95/p99':>28}" for stage in STAGES)
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.concurrency:>5} | " + " | ".join(f"{trio(r.stages.get(s, [])):>28}" for s in STAGES)
        )
    return "\n".join(lines)


def format_table(results: list[LevelResult]) -> str:
    head = (
        f"{'calls':>5} {'turns':>9} | {'overhead p50/p95/p99 ms':>23} | {'v2v p50/p95/p99 ms':>20} | "
        f"{'frame lag p99/max':>17} | {'caller lag p99':>14} | {'cpu s/call-min':>14} | {'nats':>5} | errors"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lag_max = max(r.frame_lag_ms, default=math.nan)
        lines.append(
            f"{r.concurrency:>5} {f'{r.turns}/{r.turns_planned}':>9} | {trio(r.overhead_ms):>23} | "
            f"{trio(r.v2v_ms):>20} | {f'{percentile(r.frame_lag_ms, 99):.1f}/{lag_max:.1f}':>17} | "
            f"{percentile(r.caller_lag_ms, 99):>14.1f} | {r.per_call_minute(r.cpu_seconds):>14.2f} | "
            f"{r.per_call_minute(r.nats_cpu_seconds):>5.2f} | "
            f"{r.errors or '-'}"
        )
    return "\n".join(lines)
