"""``GET /calls`` query parameters → SQL over ``calls`` (filters, search, keyset pagination).

Filters: ``robot``, ``status``, ``caller``, ``channel``, ``end_reason``, ``has_errors``
(``true``/``false``), ``from`` / ``to`` (started in [from, to): ISO 8601 or Unix ms), and ``q``, a
search (case-insensitive substring) in the call id, the caller's number and what was said in the
call's turns. ``caller`` and ``q`` reach personal data: the API allows them to the operator only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Session settings of the connections that run these queries. A search's best plan depends on its
# words (see list_calls_query), so every query is planned with its values: a generic plan, which
# PostgreSQL may adopt for a prepared statement after five runs, would read every call or every
# matching turn.
PLANNER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_FILTER_CHARS = 128
LIST_PARAMS = (
    "robot",
    "status",
    "caller",
    "channel",
    "end_reason",
    "has_errors",
    "from",
    "to",
    "q",
    "limit",
    "before",
    "before_id",
)
# parameters that reach personal data (caller numbers, what was said)
PERSONAL_PARAMS = ("caller", "q")
STATUSES = ("active", "ended")
CHANNELS = ("web", "phone")
BOOLEANS = ("true", "false")


def parse_limit(value: str | None) -> int:
    """A whole number from 1; more than ``MAX_LIMIT`` is capped."""
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {value[:20]!r}")
    return min(int(value), MAX_LIMIT)


def parse_time(value: str, name: str = "before") -> datetime:
    """Unix milliseconds or an ISO 8601 time (no offset = UTC)."""
    text = value.strip().replace(" ", "+")  # an unescaped '+' of an offset arrives as a space
    try:
        if text.isascii() and text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        at = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise ApiError(
            400, f"{name} must be Unix milliseconds or an ISO 8601 time, got {value[:40]!r}"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parse_before(value: str) -> datetime:
    return parse_time(value, "before")


def filter_value(params: dict[str, str], name: str, choices: Sequence[str] = ()) -> str | None:
    value = params.get(name, "")
    if not value:
        return None
    if choices and value not in choices:
        raise ApiError(400, f"{name} must be one of {', '.join(choices)}, got {value[:20]!r}")
    if len(value) > MAX_FILTER_CHARS:
        raise ApiError(400, f"{name} is longer than {MAX_FILTER_CHARS} characters")
    return value


def like_pattern(text: str) -> str:
    """``text`` as a literal ILIKE substring pattern (its own % and _ escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_calls_query(params: dict[str, str]) -> tuple[str, list[object], int]:
    """SQL, its arguments and the page size of ``GET /calls`` (one row more: is there a next page)."""
    limit = parse_limit(params.get("limit"))
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    conditions: list[str] = []
    columns = (("robot", ()), ("status", STATUSES), ("caller", ()), ("channel", CHANNELS), ("end_reason", ()))
    for column, choices in columns:
        value = filter_value(params, column, choices)
        if value is not None:
            conditions.append(f"{column} = {arg(value)}")
    has_errors = filter_value(params, "has_errors", BOOLEANS)
    if has_errors is not None:
        conditions.append("errors > 0" if has_errors == "true" else "errors = 0")
    if params.get("from"):
        conditions.append(f"started_at >= {arg(parse_time(params['from'], 'from'))}")
    if params.get("to"):
        conditions.append(f"started_at < {arg(parse_time(params['to'], 'to'))}")
    query = filter_value(params, "q")
    if query is not None and query.strip():
        pattern = arg(like_pattern(query.strip()))
        # Two EXISTS, the call's own columns as one of them: for each, the planner picks either a
        # probe per call walked newest first (a common word: 50 matches come at once) or one
        # trigram index search whose call ids are hashed (a rare word). A plain ILIKE on the call's
        # columns would be run on every call walked (migration 008, docs/operations.md).
        conditions.append(
            f"(EXISTS (SELECT 1 FROM calls c WHERE c.call_id = calls.call_id"
            f" AND (c.call_id ILIKE {pattern} OR c.caller ILIKE {pattern}))"
            f" OR EXISTS (SELECT 1 FROM call_turns t WHERE t.call_id = calls.call_id"
            f" AND (t.user_text ILIKE {pattern} OR t.bot_text ILIKE {pattern})))"
        )
    before_id = filter_value(params, "before_id")
    if params.get("before"):
        before = arg(parse_before(params["before"]))
        if before_id is None:
            conditions.append(f"started_at < {before}")
        else:
            # written so the started_at indexes bound the scan; the call id breaks ties
            conditions.append(
                f"started_at <= {before} AND (started_at < {before} OR call_id < {arg(before_id)})"
            )
    elif before_id is not None:
        raise ApiError(400, "before_id needs before (both come from the previous page)")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    order = f"ORDER BY started_at DESC, call_id DESC LIMIT {arg(limit + 1)}"
    sql = f"SELECT {CALL_COLUMNS} FROM calls {where} {order}"
    return sql, args, limit


CALL_COLUMNS = """call_id, robot, channel, caller, mode, status, started_at, ended_at, duration_sec,
turns, barge_ins, errors, last_prompt, voice_to_voice_p50_ms, voice_to_voice_max_ms, end_reason"""
