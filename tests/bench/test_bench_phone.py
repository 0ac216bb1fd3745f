"""Smoke test of the phone benchmark: two concurrent calls through the peer, gateway-fs and the recorder.

Pipeline services in this process (``inproc``, quicker to start); gateway-fs and the recorder are
processes of their own, as in the benchmark. The benchmark starts its own NATS server.
"""

from __future__ import annotations

import pytest

from bench.bench_phone import run_benchmark
from bench.phone_load import MACHINE, PEER, LevelStats, calls_per_core, format_cpu, format_table


@pytest.mark.slow
async def test_two_calls_are_greeted_answered_and_recorded(postgres_dsn: str, redis_url: str) -> None:
    [level] = await run_benchmark(
        [2], seconds=6.0, layout="inproc", silence_frames=10, recorder=(postgres_dsn, redis_url), gw_sample=1
    )

    assert level.errors == {}
    assert level.answered == 2
    assert level.turns_planned >= 2 and level.lost == 0
    # the greeting is cached after the warm-up call: it starts within a second of the answer
    assert len(level.greeting_ms) == 2 and all(0 <= ms < 1000 for ms in level.greeting_ms)
    # a reply never plays before the VAD's 200 ms hang-over has passed, and instant engines are quick
    assert all(200 <= ms < 1500 for ms in level.reply_ms)
    assert len(level.v2v_ms) == level.turns
    # every caller frame left the peer and, on the sampled call, reached the bus, each timed
    assert len(level.peer_lag_ms) > 2 * 5 * 50 * 0.9
    assert level.gw_lag_ms and level.gw_missing == 0
    assert level.recorded == 2
    assert level.cpu_pct["gateway-fs"] > 0 and level.cpu_pct["recorder"] > 0 and level.cpu_pct[MACHINE] > 0
    assert level.sustained()
    assert "2/2" in format_table([level]) and "gateway-fs" in format_cpu([level])


def test_calls_per_core_is_the_machine_less_the_load_generator() -> None:
    level = LevelStats(calls=130, seconds=15.0)
    level.cpu_pct = {PEER: 45.0, "gateway-fs": 29.0, "nats": 24.0, MACHINE: 143.0}

    assert calls_per_core(level) == pytest.approx(130 / 0.98)
    assert "133" in format_cpu([level]).splitlines()[-1]
    # in one process with the services (inproc) the load generator's share is unknown: no figure
    level.cpu_pct = {"peer+services": 80.0, MACHINE: 90.0}
    assert calls_per_core(level) is None
    assert format_cpu([level]).splitlines()[-1].endswith("-")
