"""The public event contract and the per-turn figures (pure functions)."""

from __future__ import annotations

import json

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import AsrFinal, CallEnded, CallStarted, ControlInterrupt, PromptSwitched, TurnMetrics
from vp_recorder.events import encode_public, public_event


def test_call_started_shape() -> None:
    event = public_event(
        CallStarted(call_id="c1", robot="demo", channel="phone", sample_rate=8000, caller="+7", ts_ms=5),
        "c1:17",
    )
    assert event == {
        "id": "c1:17",
        "type": "call.started",
        "v": 1,
        "call_id": "c1",
        "ts_ms": 5,
        "data": {
            "robot": "demo",
            "channel": "phone",
            "caller": "+7",
            "mode": "pipeline",
            "sample_rate": 8000,
        },
    }


def test_every_public_type_and_none_for_internal_messages() -> None:
    types = [
        public_event(m, "id")["type"]  # type: ignore[index]
        for m in (
            CallStarted(call_id="c", robot="r", channel="web", sample_rate=16000),
            TurnMetrics(call_id="c", turn_id="t"),
            PromptSwitched(call_id="c", turn_id="t", from_prompt="a", to_prompt="b"),
            ControlInterrupt(call_id="c", turn_id="t", by_turn_id="t2"),
            CallEnded(call_id="c", reason="hangup"),
        )
    ]
    assert types == ["call.started", "turn.completed", "prompt.switched", "barge_in", "call.ended"]
    assert public_event(AsrFinal(call_id="c", turn_id="t", text="x"), "id") is None
    # the gateway interrupts playout when the call ends too: that is no caller barge-in
    assert public_event(ControlInterrupt(call_id="c", turn_id="t"), "id") is None


def test_turn_completed_latencies_and_missing_stages() -> None:
    m = TurnMetrics(
        call_id="c", turn_id="t", speech_end_ts_ms=1000, asr_final_ts_ms=1600, first_sentence_ts_ms=1800,
        first_audio_ts_ms=0, first_played_ts_ms=0, user_text="привет",
    )  # fmt: skip
    assert turn_figures(m) == {
        "asr_ms": 600, "llm_first_sentence_ms": 800, "tts_first_audio_ms": None, "voice_to_voice_ms": None,
        "asr_latency_ms": 600, "llm_latency_ms": 200, "tts_latency_ms": None,
    }  # fmt: skip
    greeting = TurnMetrics(call_id="c", turn_id="c-greeting", first_played_ts_ms=2000)
    assert set(turn_figures(greeting).values()) == {None}  # no caller speech to measure from
    event = public_event(m, "c:3")
    assert event is not None
    data = json.loads(encode_public(event))["data"]
    assert data["user_text"] == "привет"  # UTF-8, not \\u escapes, on the wire
    assert "привет".encode() in encode_public(event)
    assert data["speech_end_ts_ms"] == 1000
    assert public_event(greeting, "c:4")["data"]["speech_end_ts_ms"] is None  # type: ignore[index]


def test_call_ended_carries_the_summary_and_only_it() -> None:
    summary = {"turns": 2}
    ended = public_event(CallEnded(call_id="c", reason="hangup"), "c:9", summary)
    assert ended is not None and ended["data"]["summary"] == {"turns": 2}
    started = public_event(
        CallStarted(call_id="c", robot="r", channel="web", sample_rate=16000), "c:1", summary
    )
    assert started is not None and "summary" not in started["data"]


def test_only_a_real_barge_in_is_a_public_barge_in() -> None:
    for reason in ("continued", "superseded", "backchannel", "call_ended"):
        cut = ControlInterrupt(call_id="c", turn_id="t", by_turn_id="t2", reason=reason)
        assert public_event(cut, "id") is None, reason


def test_turn_completed_says_how_the_reply_ended() -> None:
    continued = TurnMetrics(call_id="c", turn_id="t", interrupted=True, outcome="continued")
    event = public_event(continued, "id")
    assert event is not None and event["data"]["outcome"] == "continued"
    legacy = public_event(TurnMetrics(call_id="c", turn_id="t", interrupted=True), "id")
    assert legacy is not None and legacy["data"]["outcome"] == "cut"
