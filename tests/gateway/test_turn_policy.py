"""The turn policy on an injected clock: pure decisions, no bus, no sleeping."""

from __future__ import annotations

import pytest

from voiceplatform.config import TurnsConfig
from voiceplatform.gateway.turn_policy import Cut, Pause, Policy, Resume
from voiceplatform.gateway.turns import Turn, TurnKind, TurnState, TurnTable, TurnTransitionError

T0 = 1_000_000  # ms on the virtual clock


def policy(**overrides: object) -> Policy:
    return Policy(TurnsConfig(**overrides))  # type: ignore[arg-type]


def caller_turn(turn_id: str, state: TurnState, speech_end: int = 0, played_at: int = 0) -> Turn:
    turn = Turn(turn_id, state=TurnState.LISTENING, speech_end_ts_ms=speech_end, expects_reply=True)
    if state is not TurnState.LISTENING:
        turn.advance(TurnState.THINKING)
    if state is TurnState.SPEAKING:
        turn.advance(TurnState.SPEAKING)
        turn.first_played_ts_ms = played_at
    return turn


def test_pause_then_speech_again_before_the_reply_is_heard_continues_the_utterance() -> None:
    x = caller_turn("x", TurnState.THINKING, speech_end=T0)
    y = Turn("y", speech_start_ts_ms=T0 + 800)
    assert policy().on_caller_speech([x], y, T0 + 800) == [Cut("x", "continued", "y")]


def test_new_turn_long_after_supersedes_a_pending_reply() -> None:
    x = caller_turn("x", TurnState.THINKING, speech_end=T0)
    y = Turn("y", speech_start_ts_ms=T0 + 4000)
    assert policy(continuation_gap_ms=2500).on_caller_speech([x], y, T0 + 4000) == [
        Cut("x", "superseded", "y")
    ]


def test_speech_just_after_the_reply_started_pauses_it_and_going_on_is_a_continuation() -> None:
    x = caller_turn("x", TurnState.SPEAKING, speech_end=T0, played_at=T0 + 600)
    y = Turn("y", speech_start_ts_ms=T0 + 1200)
    p = policy(continuation_played_ms=1000, backchannel_max_ms=900)
    assert p.on_caller_speech([x], y, T0 + 1200) == [Pause("x", "y", continues=True)]
    x.paused_by, x.pause_continues = "y", True
    assert p.on_caller_speaking([x], y, T0 + 2100) == [Cut("x", "continued", "y")]
    # "ага" instead: the reply resumes
    y.advance(TurnState.THINKING)
    y.user_text = "ага"
    assert p.on_transcript([x], y) == [Resume("x"), Cut("y", "backchannel")]


def test_without_resume_on_backchannel_speech_just_after_the_reply_started_continues_at_once() -> None:
    x = caller_turn("x", TurnState.SPEAKING, speech_end=T0, played_at=T0 + 600)
    y = Turn("y", speech_start_ts_ms=T0 + 1200)
    assert policy(resume_on_backchannel=False).on_caller_speech([x], y, T0 + 1200) == [
        Cut("x", "continued", "y")
    ]


def test_speech_over_a_reply_well_under_way_pauses_it() -> None:
    x = caller_turn("x", TurnState.SPEAKING, speech_end=T0, played_at=T0 + 600)
    y = Turn("y", speech_start_ts_ms=T0 + 3000)
    assert policy().on_caller_speech([x], y, T0 + 3000) == [Pause("x", "y")]


def test_without_resume_on_backchannel_the_cut_is_immediate() -> None:
    x = caller_turn("x", TurnState.SPEAKING, speech_end=T0, played_at=T0 + 600)
    y = Turn("y", speech_start_ts_ms=T0 + 3000)
    assert policy(resume_on_backchannel=False).on_caller_speech([x], y, T0 + 3000) == [
        Cut("x", "barge_in", "y")
    ]


def test_greeting_speaking_is_paused_not_continued() -> None:
    greeting = Turn("g", TurnKind.GREETING, TurnState.THINKING)
    greeting.advance(TurnState.SPEAKING)
    greeting.first_played_ts_ms = T0
    y = Turn("y", speech_start_ts_ms=T0 + 200)
    assert policy().on_caller_speech([greeting], y, T0 + 200) == [Pause("g", "y")]


def test_barge_in_disabled_leaves_a_speaking_reply_alone_but_still_supersedes_pending_ones() -> None:
    speaking = caller_turn("x", TurnState.SPEAKING, speech_end=T0, played_at=T0 + 500)
    pending = caller_turn("z", TurnState.THINKING, speech_end=T0 - 10_000)
    y = Turn("y", speech_start_ts_ms=T0 + 5000)
    decided = Policy(TurnsConfig(), barge_in=False).on_caller_speech([speaking, pending], y, T0 + 5000)
    assert decided == [Cut("z", "superseded", "y")]


@pytest.mark.parametrize("text", ["угу", "Ага.", "да-да", "мм", ""])
def test_backchannel_or_noise_resumes_the_robot_and_drops_the_caller_turn(text: str) -> None:
    x = caller_turn("x", TurnState.SPEAKING, played_at=T0)
    x.paused_by = "y"
    y = caller_turn("y", TurnState.THINKING)
    y.user_text = text
    assert policy().on_transcript([x], y) == [Resume("x"), Cut("y", "backchannel")]


def test_real_words_over_the_robot_cut_it() -> None:
    x = caller_turn("x", TurnState.SPEAKING, played_at=T0)
    y = caller_turn("y", TurnState.THINKING)
    y.user_text = "подождите, а сколько стоит доставка"
    assert policy().on_transcript([x], y) == [Cut("x", "barge_in", "y")]


def test_long_speech_over_the_robot_is_a_barge_in_before_any_transcript() -> None:
    x = caller_turn("x", TurnState.SPEAKING, played_at=T0)
    y = Turn("y", speech_start_ts_ms=T0 + 100)
    p = policy(backchannel_max_ms=900)
    assert p.on_caller_speaking([x], y, T0 + 500) == []
    assert p.on_caller_speaking([x], y, T0 + 1000) == [Cut("x", "barge_in", "y")]
    y.advance(TurnState.THINKING)  # it ended: the transcript decides now
    assert p.on_caller_speaking([x], y, T0 + 2000) == []


def test_unfinished_utterances_hold_their_reply() -> None:
    p = policy(incomplete_hold_ms=700)
    assert p.hold_ms("я хотел бы узнать, что") == 700
    assert p.hold_ms("Сколько стоит доставка?") == 0
    assert Policy(TurnsConfig(), realtime=True).hold_ms("и") == 0


def test_realtime_only_barges_in() -> None:
    x = caller_turn("x", TurnState.THINKING, speech_end=T0)
    s = caller_turn("s", TurnState.SPEAKING, speech_end=T0 - 5000, played_at=T0 - 100)
    y = Turn("y", speech_start_ts_ms=T0 + 300)
    assert Policy(TurnsConfig(), realtime=True).on_caller_speech([x, s], y, T0 + 300) == [
        Cut("s", "barge_in", "y")
    ]


def test_turn_state_machine_refuses_moves_out_of_final_states() -> None:
    turn = caller_turn("x", TurnState.THINKING)
    turn.advance(TurnState.CUT, "continued")
    with pytest.raises(TurnTransitionError):
        turn.advance(TurnState.SPEAKING)
    assert not turn.live and turn.outcome == "continued"


def test_hold_and_pause_gate_playback() -> None:
    turn = caller_turn("x", TurnState.THINKING)
    turn.hold_until_ms = T0 + 700
    assert not turn.may_play(T0) and turn.may_play(T0 + 700)
    turn.paused_by = "y"
    assert not turn.may_play(T0 + 800)


def test_table_forgets_old_final_turns_but_keeps_live_ones() -> None:
    table = TurnTable(keep_final=2)
    live = table.add(caller_turn("live", TurnState.THINKING))
    for i in range(5):
        done = table.add(caller_turn(f"d{i}", TurnState.THINKING))
        done.advance(TurnState.DONE, "played")
        table.add(done)
    assert table.get("live") is live and table.get("d4") is not None and table.get("d0") is None


def test_a_caller_who_stopped_inside_the_turn_is_judged_by_words_not_by_the_timer() -> None:
    x = caller_turn("x", TurnState.SPEAKING, played_at=T0)
    y = Turn("y", speech_start_ts_ms=T0 + 100)
    y.speech_paused = True  # "ага", then silence the VAD has not yet called the end of the turn
    assert policy(backchannel_max_ms=900).on_caller_speaking([x], y, T0 + 2000) == []


def test_the_turn_record_names_the_tracks_it_played_unless_the_fallback_replaced_them() -> None:
    turn = Turn("t1", state=TurnState.THINKING)
    turn.sentences[0], turn.tracks[0] = "С девяти до шести.", "hours"
    assert turn.metrics("c1").track == "hours" and turn.metrics("c1").bot_text == "С девяти до шести."
    assert Turn("t2").metrics("c1").track == ""  # a synthesized reply
    turn.fallback_stage, turn.fallback_text = "audio", "Простите, заминка."
    assert turn.metrics("c1").track == "" and turn.metrics("c1").bot_text == "Простите, заминка."
