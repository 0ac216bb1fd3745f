"""Smoke test of the call search benchmark on a small history: every search finds the calls it must,
with the indexes and without them. Asserts what was found, not the times."""

from __future__ import annotations

import re

import pytest

from bench.bench_call_search import RARE_CALLS, run


@pytest.mark.slow
async def test_each_search_finds_its_calls_with_and_without_the_indexes(
    postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await run(postgres_dsn, calls=400, turns=3, repeat=1, compare=True)
    out = capsys.readouterr().out

    assert "search indexes made" in out, out
    found = re.findall(r"^\s+(.+?)\s+p50\s+[\d.]+\s+max\s+[\d.]+ ms\s+\((\d+) rows\)$", out, re.M)
    rows = [(label.strip(), int(n)) for label, n in found]
    assert rows == [
        ("common word", 51),
        ("(without the indexes)", 51),
        ("rare word", RARE_CALLS),
        ("(without the indexes)", RARE_CALLS),
        ("word no call has", 0),
        ("(without the indexes)", 0),
        ("caller number fragment", 1),
        ("(without the indexes)", 1),
        ("call id fragment", 1),
        ("(without the indexes)", 1),
    ], out
