"""Smoke test of the cost benchmark: two silent calls through the peer, gateway-fs and the pipeline
processes. Asserts the report's shape and that the frames were counted, not the figures."""

from __future__ import annotations

import pytest

from bench.bench_phone_cost import PEER, report, run


@pytest.mark.slow
@pytest.mark.e2e
async def test_two_silent_calls_are_costed_per_process() -> None:
    [cost] = await run(2, 6.0, 1, None, silent=True)

    assert {"gateway-fs", "vad", "asr", "nats", PEER} <= set(cost.cpu_ms)
    # every process counted the calls' frames in the window, each once (a process that fell behind
    # on a busy machine counts fewer: the report says so, it is not this test's to judge)
    for name in ("gateway-fs", "vad", "asr"):
        assert 0 < cost.frames[name] / (cost.calls * cost.window_s) <= 1.5 * 50, name
    assert cost.per_call_second("gateway-fs") > 0 and cost.path_total() > 0
    # the processes were woken to take the frames, and the counts were read
    assert cost.wakeups_per_call_second("vad") > 1 and cost.wakeups_per_call_second("nats") > 1
    assert "calls per core" in report([cost])
