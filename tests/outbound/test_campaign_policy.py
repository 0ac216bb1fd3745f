"""Retry, concurrency and calling hours of a campaign, against a fake clock (epoch seconds)."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from voiceplatform.outbound.campaign import (
    CallingHours,
    Campaign,
    DialTarget,
    RetryPolicy,
    outcome_of_cause,
    parse_targets,
)


def at(hour: int, minute: int = 0, day: int = 7) -> float:
    """Epoch seconds of 2026-12-<day> <hour>:<minute> UTC."""
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC).timestamp()


def targets(n: int) -> list[DialTarget]:
    return [DialTarget(f"7999000000{i}") for i in range(n)]


def test_never_more_attempts_in_flight_than_the_concurrency_limit() -> None:
    c = Campaign("c", targets(5), concurrency=2)
    now = at(10)
    first = c.due(now)
    assert len(first) == 2
    for i, state in enumerate(first):
        c.started(state, f"u{i}", now)
    assert c.due(now) == []  # both slots taken
    c.ended(first[0], "answered", now + 30)
    assert [s.target for s in c.due(now + 30)] == [targets(5)[2]]  # one slot freed, next in list order


def test_busy_is_retried_after_the_interval_up_to_the_attempts_then_given_up() -> None:
    c = Campaign("c", targets(1), retry=RetryPolicy(attempts=3, interval_s=600))
    now = at(10)
    for n in range(1, 4):
        (state,) = c.due(now)
        c.started(state, f"u{n}", now)
        c.ended(state, "busy", now + 5, "USER_BUSY")
        if n < 3:
            assert state.status == "pending"
            assert c.due(now + 5 + 599) == []  # not before the interval
            assert c.next_wakeup(now + 5) == pytest.approx(now + 605)
            now += 605
    assert state.status == "gave_up"
    assert [a.outcome for a in state.attempts] == ["busy", "busy", "busy"]
    assert c.finished


def test_only_configured_outcomes_are_retried_and_answered_is_final() -> None:
    retry = RetryPolicy(attempts=5, interval_s=0, on=["no_answer"])
    c = Campaign("c", targets(2), concurrency=2, retry=retry)
    a, b = c.due(at(10))
    c.started(a, "1", at(10))
    c.started(b, "2", at(10))
    c.ended(a, "failed", at(10, 1), "CALL_REJECTED")
    c.ended(b, "answered", at(10, 1))
    assert (a.status, b.status) == ("gave_up", "done")
    assert c.due(at(11)) == []
    assert c.finished


def test_no_attempt_starts_outside_calling_hours_in_the_campaigns_time_zone() -> None:
    hours = CallingHours(start=time(9), end=time(21), tz="Europe/Moscow")  # UTC+3
    c = Campaign("c", targets(1), hours=hours)
    assert c.due(at(5, 59)) == []  # 08:59 in Moscow
    assert c.next_wakeup(at(5, 59)) == at(6)  # opens at 09:00 Moscow = 06:00 UTC
    assert len(c.due(at(6))) == 1
    assert c.due(at(18)) == []  # 21:00 Moscow: closed
    # after closing, the next opening is the next morning
    assert c.next_wakeup(at(18, 30)) == at(6, day=8)


def test_a_retry_that_falls_after_closing_waits_for_the_next_opening() -> None:
    hours = CallingHours(start=time(9), end=time(21), tz="UTC")
    c = Campaign("c", targets(1), hours=hours, retry=RetryPolicy(attempts=2, interval_s=3600))
    (state,) = c.due(at(20, 30))
    c.started(state, "1", at(20, 30))
    c.ended(state, "no_answer", at(20, 31), "NO_ANSWER")
    assert c.due(at(21, 31)) == []
    assert c.next_wakeup(at(21, 31)) == at(9, day=8)
    assert len(c.due(at(9, day=8))) == 1


def test_hours_spanning_midnight() -> None:
    hours = CallingHours(start=time(22), end=time(2), tz="UTC")
    assert hours.open_at(at(23)) and hours.open_at(at(1, 59))
    assert not hours.open_at(at(2)) and not hours.open_at(at(12))


def test_cancel_stops_new_attempts_and_finishes_once_calls_are_over() -> None:
    c = Campaign("c", targets(3))
    (state,) = c.due(at(10))
    c.started(state, "1", at(10))
    c.cancelled = True
    assert c.due(at(10)) == [] and not c.finished
    c.ended(state, "busy", at(10, 1))
    assert state.status == "gave_up" and c.finished


def test_hangup_causes_map_to_outcomes() -> None:
    assert outcome_of_cause("USER_BUSY") == "busy"
    assert outcome_of_cause("NO_ANSWER") == "no_answer"
    assert outcome_of_cause("no_user_response") == "no_answer"
    assert outcome_of_cause("CALL_REJECTED") == "failed"


def test_lists_from_csv_and_json_carry_per_call_variables() -> None:
    csv_list = parse_targets("number,name,debt\n+7 (999) 000-11-22,Анна,1500\n79990001123,Пётр,0\n", "csv")
    assert csv_list[0] == DialTarget("+79990001122", {"name": "Анна", "debt": "1500"})
    json_list = parse_targets(
        '[{"number": "79990001122", "variables": {"order": "A-17"}},'
        ' {"number": "79990001123", "name": "Пётр"}]',
        "json",
    )
    assert json_list[0].variables == {"order": "A-17"} and json_list[1].variables == {"name": "Пётр"}
    with pytest.raises(ValueError, match="item 1"):
        parse_targets("number\nnot-a-number\n", "csv")
    with pytest.raises(ValueError, match="variable name"):
        parse_targets('[{"number": "79990001122", "variables": {"bad name": "x"}}]', "json")
    with pytest.raises(ValueError, match="number"):
        parse_targets("phone\n79990001122\n", "csv")
