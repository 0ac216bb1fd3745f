"""Smoke test of the platform-overhead benchmark: two concurrent calls, one turn each.

The benchmark starts its own NATS server (a shared one would let other runs' services take its calls).
"""

from __future__ import annotations

import pytest

from bench.bench_platform import run_benchmark
from bench.platform_report import format_table


@pytest.mark.slow
async def test_two_calls_one_turn_produce_measurements() -> None:
    [level] = await run_benchmark([2], turns=1, min_turns=1)

    assert level.concurrency == 2
    assert level.errors == {}
    assert level.turns == 2
    assert len(level.v2v_ms) == 2
    # instant engines: the platform answers well within a second, and never before speech ended
    assert all(0 <= ms < 1000 for ms in level.v2v_ms)
    assert all(-40 < ms < 1000 for ms in level.overhead_ms)
    assert level.frame_lag_ms, "reply frames were timestamped at the sink"
    assert level.cpu_seconds > 0
    assert "2/2" in format_table([level])
