"""The call.ended summary: counts, voice-to-voice figures, dedupe by sequence and by turn."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    Message,
    PromptSwitched,
    StageError,
    TurnMetrics,
)
from vp_recorder.stored import StoredEvent
from vp_recorder.summary import call_summary, nearest_rank

CALL = "sum-1"


def stored(messages: Sequence[Message], first_seq: int = 1) -> list[StoredEvent]:
    return [StoredEvent(seq, "vp.call.sum-1.lifecycle", m) for seq, m in enumerate(messages, first_seq)]


def turn(turn_id: str, user_text: str = "", v2v_ms: int | None = None, **kw: object) -> TurnMetrics:
    speech_end = 10_000 if user_text else 0
    played = speech_end + v2v_ms if v2v_ms is not None else 0
    return TurnMetrics(
        call_id=CALL,
        turn_id=turn_id,
        user_text=user_text,
        bot_text="ответ",
        speech_end_ts_ms=speech_end,
        asr_final_ts_ms=speech_end + 300 if speech_end else 0,
        first_played_ts_ms=played,
        **kw,  # type: ignore[arg-type]
    )


def a_call() -> list[Message]:
    return [
        CallStarted(call_id=CALL, robot="topic_prompts_russian", channel="phone", sample_rate=8000),
        turn(f"{CALL}-greeting"),
        AsrFinal(call_id=CALL, turn_id="u1", text="у меня собака"),
        PromptSwitched(call_id=CALL, turn_id="u1", from_prompt="default", to_prompt="pets"),
        turn("u1", "у меня собака", v2v_ms=900),
        ControlInterrupt(call_id=CALL, turn_id="u1", by_turn_id="u2", played_text="Для"),
        StageError(call_id=CALL, stage="tts", kind="timeout", detail="slow", turn_id="u2"),
        turn("u2", "а дети", v2v_ms=700, interrupted=True),
        PromptSwitched(call_id=CALL, turn_id="u3", from_prompt="pets", to_prompt="children"),
        turn("u3", "сын", v2v_ms=1500),
        CallEnded(call_id=CALL, reason="hangup", duration_ms=30_000, turns=4),
    ]


def test_summary_of_a_call() -> None:
    assert call_summary(stored(a_call())) == {
        "turns": 4,
        "user_turns": 3,
        "barge_ins": 1,
        "errors": 1,
        "prompt_switches": 2,
        "voice_to_voice_ms": {"p50": 900, "max": 1500},
        "robot": "topic_prompts_russian",
        "channel": "phone",
        "last_prompt": "children",
        "usage": [],  # no provider reported usage (tests/recorder/test_usage.py has calls that do)
    }


def test_redelivered_events_count_once() -> None:
    events = stored(a_call())
    # the same stream sequences again (a redelivery), shuffled: nothing changes
    again = events + list(reversed(events))
    assert call_summary(again) == call_summary(events)


def test_a_turn_reported_twice_counts_once_with_its_last_report() -> None:
    messages = [turn("u1", "да", v2v_ms=2000), turn("u1", "да", v2v_ms=600)]
    summary = call_summary(stored(messages))
    assert summary["turns"] == 1
    assert summary["voice_to_voice_ms"] == {"p50": 600, "max": 600}


def test_stream_order_decides_the_last_prompt_not_list_order() -> None:
    first = StoredEvent(5, "s", PromptSwitched(call_id=CALL, turn_id="a", from_prompt="d", to_prompt="pets"))
    later = StoredEvent(9, "s", PromptSwitched(call_id=CALL, turn_id="b", from_prompt="d", to_prompt="kids"))
    assert call_summary([later, first])["last_prompt"] == "kids"


def test_empty_call_and_turns_without_voice_to_voice() -> None:
    assert call_summary([]) == {
        "turns": 0,
        "user_turns": 0,
        "barge_ins": 0,
        "errors": 0,
        "prompt_switches": 0,
        "voice_to_voice_ms": None,
        "robot": None,
        "channel": None,
        "last_prompt": None,
        "usage": [],
    }
    # the greeting (no caller speech) and a turn interrupted before any audio: no figure
    summary = call_summary(stored([turn(f"{CALL}-greeting"), turn("u1", "алло", v2v_ms=None)]))
    assert summary["turns"] == 2
    assert summary["user_turns"] == 1
    assert summary["voice_to_voice_ms"] is None


@pytest.mark.parametrize(
    ("values", "p50"),
    [([7], 7), ([1, 2], 1), ([1, 2, 3], 2), ([1, 2, 3, 4], 2), ([1, 2, 3, 4, 5], 3)],
)
def test_nearest_rank_median_is_a_measured_value(values: list[int], p50: int) -> None:
    assert nearest_rank(values, 0.5) == p50
    assert nearest_rank(values, 1.0) == values[-1]


def test_nearest_rank_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        nearest_rank([], 0.5)
