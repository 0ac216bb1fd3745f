"""Smoke test of the conversation benchmark: ``--quick`` with one call at 16 kHz through the whole
platform (every service its own process over a private NATS). Asserts the report's shape, not the
figures: those are the benchmark's output, judged by people."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import bench_conversation
from bench.conversation_metrics import METRIC_FIELDS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.timeout(400),
    pytest.mark.skipif(shutil.which("text2wave") is None, reason="Festival (text2wave) is not installed"),
]


def test_quick_run_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = bench_conversation.main(["--quick", "--calls", "1", "--rates", "16000", "--json", str(out)])

    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    for scope in ("16k", "all"):
        metrics = report["metrics"][scope]
        assert set(METRIC_FIELDS) <= set(metrics), set(METRIC_FIELDS) - set(metrics)
        assert set(metrics["v2v_ms"]) == {"p50", "p95", "p99", "n"}
    assert report["metrics"]["16k"]["calls"] == 1
    assert report["utterances"], "the call played utterances"
    assert {"plain", "pause", "backchannel"} >= {u["kind"] for u in report["utterances"]}
    assert report["calls"][0]["events"], "the client saw the gateway's events"
