"""voiceplatform.tracing: one trace per turn from derived ids, over OTLP/HTTP; off and free by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from tests.stand_ins.otlp_collector import OtlpCollector
from voiceplatform import tracing
from voiceplatform.config import ServiceSettings
from voiceplatform.logging import bind_call, configure_logging

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeTurn:
    turn_id: str
    outcome: str = "played"
    speech_start_ts_ms: int = 0
    speech_end_ts_ms: int = 0
    asr_final_ts_ms: int = 0
    first_played_ts_ms: int = 0
    played_ms: int = 0


def test_turn_ids_are_derived_from_call_and_turn_alone() -> None:
    trace_id, root_id = tracing.turn_ids("web-1", "web-1-t1-ab12")
    assert (trace_id, root_id) == tracing.turn_ids("web-1", "web-1-t1-ab12")
    assert trace_id != tracing.turn_ids("web-1", "web-1-t2-ab12")[0]
    assert trace_id != tracing.turn_ids("web-2", "web-1-t1-ab12")[0]
    assert 0 < trace_id < 2**128 and 0 < root_id < 2**64
    assert tracing.trace_id_hex("web-1", "web-1-t1-ab12") == f"{trace_id:032x}"


def test_stage_spans_are_children_of_the_gateway_turn_span(collector: OtlpCollector) -> None:
    assert tracing.configure("gateway-web", endpoint=collector.endpoint, instance_id="gw-1")
    tracing.span("asr.final", "web-1", "web-1-t1", 120.0, provider="whisper")
    tracing.span("llm.first_sentence", "web-1", "web-1-t1", 80.0, robot="demo", provider="script")
    tracing.span("asr.final", "web-1", "web-1-t2", 50.0)  # another turn: another trace
    tracing.span("asr.final", "web-1", "", 50.0)  # no turn: nothing to attach it to
    now = tracing.time.time_ns() // 1_000_000
    turn = FakeTurn("web-1-t1", speech_start_ts_ms=now - 2000, speech_end_ts_ms=now - 1000)
    turn.first_played_ts_ms, turn.played_ms = now - 500, 480
    tracing.turn_finished("web-1", turn, "demo")
    tracing.shutdown()  # flushes

    spans = {(s.name, s.attributes["vp.turn_id"]): s for s in collector.spans}
    assert len(collector.spans) == 5
    trace_id, root_id = tracing.turn_ids("web-1", "web-1-t1")
    root = spans["turn", "web-1-t1"]
    assert (root.trace_id, root.span_id, root.parent_span_id) == (f"{trace_id:032x}", f"{root_id:016x}", "")
    assert root.attributes == {
        "vp.call_id": "web-1",
        "vp.turn_id": "web-1-t1",
        "vp.robot": "demo",
        "vp.outcome": "played",
    }
    assert root.start_ns == (now - 2000) * 1_000_000  # from the caller's first word
    assert root.service == "gateway-web"
    for name in ("asr.final", "llm.first_sentence", "gateway.playout"):
        child = spans[name, "web-1-t1"]
        assert child.trace_id == root.trace_id and child.parent_span_id == root.span_id
        assert child.span_id != root.span_id
    assert spans["asr.final", "web-1-t1"].attributes["vp.provider"] == "whisper"
    asr = spans["asr.final", "web-1-t1"]
    # took_ms, as given: not stretched by the time it takes to record the span (a busy machine's)
    assert abs(asr.end_ns - asr.start_ns - 120_000_000) <= 10_000
    assert spans["llm.first_sentence", "web-1-t1"].attributes["vp.robot"] == "demo"
    playout = spans["gateway.playout", "web-1-t1"]
    assert playout.start_ns == (now - 500) * 1_000_000 and playout.attributes["vp.played_ms"] == 480
    assert spans["asr.final", "web-1-t2"].trace_id != root.trace_id


def test_a_turn_that_never_played_has_no_playout_span(collector: OtlpCollector) -> None:
    tracing.configure("gateway-web", endpoint=collector.endpoint)
    tracing.turn_finished("web-1", FakeTurn("web-1-t3", outcome="no_reply", speech_end_ts_ms=1), "demo")
    tracing.shutdown()
    assert [s.name for s in collector.spans] == ["turn"]
    assert collector.spans[0].attributes["vp.outcome"] == "no_reply"


def test_sampling_keeps_or_drops_whole_turns(collector: OtlpCollector) -> None:
    tracing.configure("asr", endpoint=collector.endpoint, sample_ratio=0.0)
    tracing.span("asr.final", "web-1", "web-1-t1", 10.0)
    tracing.turn_finished("web-1", FakeTurn("web-1-t1", speech_end_ts_ms=1), "demo")
    tracing.shutdown()
    assert collector.spans == []


def test_settings_name_the_endpoint_and_the_traces_endpoint_wins(monkeypatch, collector) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1/")
    monkeypatch.setenv("VP_TRACE_SAMPLE_RATIO", "0.5")
    settings = ServiceSettings()
    assert settings.otel_exporter_otlp_endpoint == "http://127.0.0.1:1/"
    assert settings.trace_sample_ratio == 0.5
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{collector.endpoint}/v1/traces")
    monkeypatch.setenv("VP_TRACE_SAMPLE_RATIO", "1")
    with capture_logs() as logs:
        assert tracing.configure_from(ServiceSettings(), "tts")
    assert logs[-1]["event"] == "tracing.on" and logs[-1]["collector"] == f"{collector.endpoint}/v1/traces"
    tracing.span("tts.first_audio", "web-1", "web-1-t1", 5.0)
    tracing.shutdown()
    assert [(s.service, s.name) for s in collector.spans] == [("tts", "tts.first_audio")]


def test_the_collector_is_logged_without_credentials(collector: OtlpCollector) -> None:
    host = collector.endpoint.removeprefix("http://")
    with capture_logs() as logs:
        assert tracing.configure("asr", endpoint=f"http://user:s3cret-pass@{host}")
    assert logs[-1]["collector"] == f"http://{host}/v1/traces"


def test_requested_without_the_packages_warns_once_and_runs_without(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "voiceplatform.tracing_sdk", None)  # import fails as if not installed
    with capture_logs() as logs:
        assert not tracing.configure("asr", endpoint="http://127.0.0.1:4318")
    assert [e["event"] for e in logs] == ["tracing.unavailable"]
    assert "voice-platform[otel]" in logs[0]["reason"]
    assert not tracing.enabled()
    tracing.span("asr.final", "web-1", "web-1-t1", 5.0)  # a no-op, no error


def test_log_lines_of_a_turn_carry_its_trace_id_while_tracing_is_on(capsys, collector) -> None:
    configure_logging("test-svc", json=True)
    log = structlog.get_logger("t")
    with bind_call(call_id="web-1", turn_id="web-1-t1"):
        log.info("before")
    tracing.configure("asr", endpoint=collector.endpoint)
    with bind_call(call_id="web-1", turn_id="web-1-t1"):
        log.info("during")
    with bind_call(call_id="web-1"):
        log.info("no_turn")
    log.info("explicit", call_id="web-1", turn_id="web-1-t2")
    lines = {e["event"]: e for e in map(json.loads, capsys.readouterr().err.strip().splitlines())}
    assert "trace_id" not in lines["before"]
    assert lines["during"]["trace_id"] == tracing.trace_id_hex("web-1", "web-1-t1")
    assert "trace_id" not in lines["no_turn"]
    assert lines["explicit"]["trace_id"] == tracing.trace_id_hex("web-1", "web-1-t2")


OFF_PROBE = """
import sys
from voiceplatform import tracing
from voiceplatform.config import ServiceSettings
from voiceplatform.runtime import run_service
import vp_vad.session, vp_asr.session, vp_router.app, vp_llm.turn, vp_tts.output, vp_gateway_web.app
assert tracing.configure_from(ServiceSettings(), "probe") is False
tracing.span("asr.final", "web-1", "web-1-t1", 5.0, provider="x")
print([m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter",
                                               "opentelemetry.proto", "voiceplatform.tracing_sdk"))])
"""


def test_off_by_default_imports_no_opentelemetry_sdk() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", OFF_PROBE], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("endpoint", ["", "  "])
def test_no_endpoint_means_off(endpoint: str) -> None:
    assert not tracing.configure("asr", endpoint=endpoint.strip())
    assert not tracing.enabled()
