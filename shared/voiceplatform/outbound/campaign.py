"""An outbound campaign: numbers with per-call variables, dialled under a policy.

Pure and clock-free: every method takes ``now`` (epoch seconds), so the policy is tested with a
fake clock and gateway-fs's dialer only feeds it real time and the outcomes FreeSWITCH reports.

- ``concurrency``: at most this many attempts in flight (dialling or talking) at once;
- ``RetryPolicy``: an attempt that ended ``busy`` / ``no_answer`` / ``failed`` (as configured) is
  tried again after ``interval_s``, up to ``attempts`` attempts in all; ``answered`` is final;
- ``CallingHours``: attempts start only between ``start`` and ``end`` local time in ``tz`` (an
  attempt in flight at closing time is not cut). ``end`` before ``start`` spans midnight.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voiceplatform.outbound.template import clean_variables

Outcome = Literal["answered", "busy", "no_answer", "failed"]
RETRYABLE: tuple[Outcome, ...] = ("busy", "no_answer", "failed")
NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
MAX_TARGETS = 100_000
# FreeSWITCH hangup causes → outcome of an attempt (anything else that did not answer: failed)
_CAUSES: dict[str, Outcome] = {
    "USER_BUSY": "busy",
    "NORMAL_CIRCUIT_CONGESTION": "busy",
    "NO_ANSWER": "no_answer",
    "NO_USER_RESPONSE": "no_answer",
    "ALLOTTED_TIMEOUT": "no_answer",
    "PROGRESS_TIMEOUT": "no_answer",
    "SUBSCRIBER_ABSENT": "no_answer",
}


def outcome_of_cause(cause: str) -> Outcome:
    return _CAUSES.get(cause.strip().upper(), "failed")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Model):
    attempts: int = Field(default=3, ge=1, le=20)
    interval_s: float = Field(default=600.0, ge=0)
    on: list[Outcome] = Field(default_factory=lambda: list(RETRYABLE))


class CallingHours(_Model):
    start: time = time(9, 0)
    end: time = time(21, 0)
    tz: str = "Europe/Moscow"

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def _local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, tz=UTC).astimezone(ZoneInfo(self.tz))

    def open_at(self, now: float) -> bool:
        t = self._local(now).time()
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # spans midnight

    def next_open(self, now: float) -> float:
        """``now`` if open, else the epoch second the window opens next."""
        if self.open_at(now):
            return now
        local = self._local(now)
        opening = datetime.combine(local.date(), self.start, tzinfo=local.tzinfo)
        if opening <= local:
            opening = datetime.combine(local.date() + timedelta(days=1), self.start, tzinfo=local.tzinfo)
        return opening.timestamp()


@dataclass(frozen=True)
class DialTarget:
    number: str
    variables: dict[str, str] = field(default_factory=dict)


def make_target(number: object, variables: dict[str, object]) -> DialTarget:
    text = re.sub(r"[\s()-]", "", str(number or ""))
    if not NUMBER.match(text):
        raise ValueError(f"{text[:20]!r} is not a phone number (digits, optional +, 3-15 digits)")
    return DialTarget(text, clean_variables(variables))


def parse_targets(text: str, fmt: Literal["csv", "json"]) -> list[DialTarget]:
    """CSV with a ``number`` column (other columns are the call's variables), or a JSON list of
    ``{"number": ..., "variables": {...}}`` (or flat objects: every key but number is a variable)."""
    rows: list[tuple[object, dict[str, object]]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "number" not in reader.fieldnames:
            raise ValueError("the CSV needs a header with a 'number' column")
        for row in reader:
            rows.append((row.get("number"), {k: v for k, v in row.items() if k and k != "number"}))
    else:
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError("the JSON list must be an array of objects")
        for item in data:
            if not isinstance(item, dict):
                raise ValueError("each JSON item must be an object with a 'number'")
            variables = item.get("variables")
            if not isinstance(variables, dict):
                variables = {k: v for k, v in item.items() if k != "number"}
            rows.append((item.get("number"), variables))
    if len(rows) > MAX_TARGETS:
        raise ValueError(f"at most {MAX_TARGETS} numbers per campaign")
    targets = []
    for i, (number, variables) in enumerate(rows, 1):
        try:
            targets.append(make_target(number, variables))
        except ValueError as exc:
            raise ValueError(f"item {i}: {exc}") from None
    return targets


@dataclass
class Attempt:
    number: int  # 1-based
    uuid: str
    started: float
    outcome: Outcome | None = None
    cause: str = ""
    amd: str = ""


@dataclass
class TargetState:
    target: DialTarget
    attempts: list[Attempt] = field(default_factory=list)
    next_at: float = 0.0
    status: Literal["pending", "dialing", "done", "gave_up"] = "pending"

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


class Campaign:
    def __init__(
        self,
        campaign_id: str,
        targets: list[DialTarget],
        *,
        concurrency: int = 1,
        retry: RetryPolicy | None = None,
        hours: CallingHours | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.id = campaign_id
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.hours = hours  # None: any time
        self.states = [TargetState(t) for t in targets]
        self.cancelled = False

    @property
    def in_flight(self) -> int:
        return sum(1 for s in self.states if s.status == "dialing")

    @property
    def finished(self) -> bool:
        if self.cancelled and not self.in_flight:
            return True
        return all(s.status in ("done", "gave_up") for s in self.states)

    def due(self, now: float) -> list[TargetState]:
        """Targets to dial now (their attempt is not started yet: call ``started`` for each)."""
        if self.cancelled or (self.hours is not None and not self.hours.open_at(now)):
            return []
        free = self.concurrency - self.in_flight
        picked: list[TargetState] = []
        for state in self.states:
            if free <= 0:
                break
            if state.status == "pending" and state.next_at <= now:
                picked.append(state)
                free -= 1
        return picked

    def next_wakeup(self, now: float) -> float | None:
        """When something may become due (None: nothing pending)."""
        pending = [s.next_at for s in self.states if s.status == "pending"]
        if not pending or self.cancelled:
            return None
        at = max(min(pending), now)
        return self.hours.next_open(at) if self.hours is not None else at

    def started(self, state: TargetState, uuid: str, now: float) -> Attempt:
        attempt = Attempt(len(state.attempts) + 1, uuid, now)
        state.attempts.append(attempt)
        state.status = "dialing"
        return attempt

    def ended(self, state: TargetState, outcome: Outcome, now: float, cause: str = "") -> None:
        """The attempt in flight ended: final, or pending again after the retry interval."""
        attempt = state.last
        if attempt is not None and attempt.outcome is None:
            attempt.outcome, attempt.cause = outcome, cause
        if outcome == "answered":
            state.status = "done"
        elif outcome in self.retry.on and len(state.attempts) < self.retry.attempts and not self.cancelled:
            state.status, state.next_at = "pending", now + self.retry.interval_s
        else:
            state.status = "gave_up"

    def report(self) -> list[dict[str, object]]:
        return [
            {
                "number": s.target.number,
                "status": s.status,
                "attempts": [
                    {
                        "attempt": a.number,
                        "uuid": a.uuid,
                        "outcome": a.outcome,
                        "cause": a.cause,
                        "amd": a.amd,
                    }
                    for a in s.attempts
                ],
            }
            for s in self.states
        ]
