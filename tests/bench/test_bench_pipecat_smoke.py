"""Smoke test of the pipecat comparison: pipecat in its own venv and this platform, two calls each.

The first run installs pipecat-ai into ``.bench/`` (a minute or so; later runs reuse it).
"""

from __future__ import annotations

import pytest

from bench.bench_pipecat import ROOT, pipecat_python, run_pipecat, run_platform, side_by_side


@pytest.mark.slow
def test_both_sides_answer_every_turn_and_print_a_ratio() -> None:
    python = pipecat_python("1.14.0", ROOT / ".bench" / "pipecat-1.14.0")
    [theirs] = run_pipecat(python, [2], turns=1, min_turns=1)
    [ours] = run_platform([2], turns=1, min_turns=1)

    for side in (theirs, ours):
        assert side.errors == {}
        assert len(side.overhead_ms) == 2
        # instant engines: a reply well within a second of the hang-over, never before speech ended
        assert all(-40 < ms < 1000 for ms in side.overhead_ms)
        assert side.frame_lag_ms and side.cpu_seconds > 0
    table = side_by_side([ours], [theirs])
    assert "×" in table.splitlines()[2]
