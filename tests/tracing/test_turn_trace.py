"""One caller turn through vad, asr, prompt-router, llm and tts (one process each, instant engines, real
NATS) and a gateway call session in this process: one trace, spans from every service, ids in the logs.

The services are the platform benchmark's (``bench/platform_stack.py``, ``procs`` layout): each child
runs ``run_service``, so it turns tracing on from ``OTEL_EXPORTER_OTLP_ENDPOINT`` as a deployed
service does, and exports to this test's OTLP collector stand-in when SIGTERM ends it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from bench.bench_platform import _wait_presence, simulated_call
from bench.platform_report import LevelResult
from bench.platform_stack import ROBOT, ProcessStack, make_robot
from tests.stand_ins.otlp_collector import CollectedSpan, OtlpCollector
from voiceplatform import tracing
from voiceplatform.bus.nats import NatsBus
from voiceplatform.config import RobotRegistry
from voiceplatform.gateway import GatewayDirectory
from voiceplatform_devstack.devinfra import EmbeddedNats

SERVICE_OF_SPAN = {
    "vad.end": "vad",
    "asr.final": "asr",
    "router.route": "prompt-router",
    "llm.first_sentence": "llm",
    "tts.first_audio": "tts",
    "gateway.playout": "gateway-web",
    "turn": "gateway-web",
}


@pytest.mark.e2e
async def test_one_turn_is_one_trace_across_the_services(
    tmp_path: Path, collector: OtlpCollector, monkeypatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)  # the children's settings
    # export while the call runs, not only in the (bounded) flush at SIGTERM: the machine may be busy
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    assert tracing.configure("gateway-web", endpoint=collector.endpoint)  # this process: the gateway
    nats = EmbeddedNats.start(tmp_path / "nats")  # private: no other run's workers take our calls
    stack = ProcessStack(make_robot(tmp_path / "robots", silence_frames=25), nats.url, tmp_path / "logs")
    result = LevelResult(concurrency=1, turns_planned=1)
    try:
        await stack.start()
        bus = await NatsBus.connect(nats.url, "test-gateway")
        directory = GatewayDirectory(bus, required=("vad", "asr", "prompt-router", "llm", "tts"))
        await directory.start()
        try:
            await _wait_presence(directory, stack, timeout=120)
            robot = RobotRegistry(tmp_path / "robots").get(ROBOT)
            await simulated_call(bus, robot, directory, 1, 0.0, 0.0, result, seed=7)
        finally:
            await directory.stop()
            await bus.drain()
    finally:
        await stack.stop()  # SIGTERM: every service exports what it buffered
        nats.stop()
        tracing.shutdown(timeout_s=60)
    assert result.errors == {} and result.turns == 1, result.errors

    traces: dict[str, list[CollectedSpan]] = defaultdict(list)
    for span in collector.spans:
        traces[span.trace_id].append(span)
    [vad_end] = [s for s in collector.spans if s.name == "vad.end"]
    turn_id, call_id = vad_end.attributes["vp.turn_id"], vad_end.attributes["vp.call_id"]
    spans = traces[tracing.trace_id_hex(call_id, turn_id)]
    # one trace holds the whole turn, each stage recorded by the service that did it
    assert {(s.name, s.service) for s in spans} == set(SERVICE_OF_SPAN.items())
    assert len(traces) == 1, {t: [s.name for s in ss] for t, ss in traces.items()}
    [root] = [s for s in spans if s.name == "turn"]
    assert root.parent_span_id == "" and root.attributes["vp.outcome"] == "played"
    assert root.attributes["vp.robot"] == ROBOT
    for span in spans:
        assert span.attributes["vp.call_id"] == call_id and span.attributes["vp.turn_id"] == turn_id
        if span is not root:
            assert span.parent_span_id == root.span_id
            assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns, span.name
    by_name = {s.name: s for s in spans}
    assert by_name["asr.final"].attributes["vp.provider"] == "instant"
    assert by_name["tts.first_audio"].attributes["vp.provider"] == "instant"
    assert by_name["llm.first_sentence"].attributes["vp.provider"] == "script"
    assert by_name["router.route"].attributes["vp.robot"] == ROBOT

    # every service's log lines about the turn name its trace
    for role in ("vad", "asr", "prompt-router", "llm", "tts"):
        text = (tmp_path / "logs" / f"{role}.log").read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        about_turn = [e for e in lines if e.get("turn_id") == turn_id]
        assert about_turn, role
        assert {e.get("trace_id") for e in about_turn} == {root.trace_id}, role
