"""The recorder's read-only HTTP API for operators and dashboards (JSON, next to /health and /metrics).

- ``GET /calls``: latest calls from PostgreSQL ``calls`` (filters robot, status, caller, channel;
  keyset pagination by ``started_at``, ties broken by ``call_id``);
- ``GET /calls/{call_id}``: the call's transcript document rebuilt from its stored events: from the
  JetStream stream, and from PostgreSQL ``call_events`` for what the stream no longer holds (events
  older than the stream's max age); response header ``Vp-Source`` says which answered;
- ``GET /calls/{call_id}/turns``: the per-turn figures (``call_turns``) in the order the turns began;
- ``GET /scenarios/{robot}/{name}``: one scenario through the Redis cache (``scenario:{robot}:{name}``).

Every route needs a bearer token (``api_auth``): the operator token sees everything, the read-only
token gets no caller numbers (null; no ``caller`` filter), no transcripts (403) and turns without
their texts.

The PostgreSQL pool is made on the first request that needs it, so the recorder starts (and records
into the stream) while PostgreSQL is down; a request that cannot reach it gets 503 with a JSON error.
Errors never carry exception texts (a DSN could be in one): clients get a fixed message, logs the type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, Union

import asyncpg
import msgspec
import nats.js.errors
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voiceplatform import subjects
from voiceplatform.wire import CallStarted
from voiceplatform.wire.codec import MESSAGE_TYPES
from vp_recorder.api_auth import ApiAuth, AuthError, Role, redact_call, redact_turn, require_operator
from vp_recorder.directory import get_scenario
from vp_recorder.scenario_cache import ScenarioCache
from vp_recorder.settings import RecorderSettings
from vp_recorder.stored import CallEventReader, StoredEvent
from vp_recorder.stores.postgres import quote_ident
from vp_recorder.transcript import build_transcript

log = structlog.get_logger("vp_recorder.api")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
POOL_MIN, POOL_MAX = 1, 4
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
STREAM_READ_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 2.0
RETRY_AFTER_S = "5"
MAX_FILTER_CHARS = 128
LIST_PARAMS = ("robot", "status", "caller", "channel", "limit", "before", "before_id")
STATUSES = ("active", "ended")
CHANNELS = ("web", "phone")

T = TypeVar("T")
Query = Callable[[asyncpg.Connection], Awaitable[T]]

# what the JSON column holds is msgspec's JSON of the wire message: decoded as the wire codec does
_AnyMessage = Union[MESSAGE_TYPES]  # type: ignore[valid-type]  # noqa: UP007
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_AnyMessage)

# PostgreSQL cannot be reached or refuses the link (not: a query it rejects, which is a bug)
_UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)

_CALL_COLUMNS = """call_id, robot, channel, caller, mode, status, started_at, ended_at, duration_sec,
turns, barge_ins, errors, last_prompt, voice_to_voice_p50_ms, voice_to_voice_max_ms, end_reason"""

_CALL_EVENTS = "SELECT seq, subject, data::text AS data FROM call_events WHERE call_id = $1 ORDER BY seq"
_CALL_EXISTS = "SELECT EXISTS (SELECT 1 FROM calls WHERE call_id = $1)"
# turns in the order they began in the stream (the greeting has no caller speech to order it by)
_CALL_TURNS = """
SELECT t.turn_id, t.user_text, t.bot_text, t.interrupted, t.played_text, t.speech_end_at,
       t.asr_ms, t.llm_first_sentence_ms, t.tts_first_audio_ms, t.voice_to_voice_ms,
       t.asr_latency_ms, t.llm_latency_ms, t.tts_latency_ms,
       t.asr_provider, t.llm_provider, t.prompt_tokens, t.completion_tokens
FROM call_turns t
WHERE t.call_id = $1
ORDER BY (SELECT min(e.seq) FROM call_events e WHERE e.call_id = t.call_id AND e.turn_id = t.turn_id)
         NULLS LAST, t.turn_id
"""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PostgresUnavailable(ApiError):
    def __init__(self, message: str = "postgres is unavailable") -> None:
        super().__init__(503, message)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat(timespec="milliseconds")


class RecorderApi:
    """What the API reads through: a lazy PostgreSQL pool, Redis (scenario cache), the stream reader.

    ``reader`` is set by the recorder once JetStream is up: the runner builds the HTTP app before it
    starts the service, and until then transcripts come from PostgreSQL alone.
    """

    def __init__(self, settings: RecorderSettings) -> None:
        self._dsn = settings.postgres_dsn.get_secret_value()
        self.schema = settings.postgres_schema
        self.reader: CallEventReader | None = None
        self.auth = ApiAuth.from_settings(settings)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False
        # no connection is made here: redis-py connects on the first command
        self._redis = aioredis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self.scenarios = ScenarioCache(self._redis, self._load_scenario)

    async def aclose(self) -> None:
        """Close the pool and the Redis client; later requests get 503 (the recorder is stopping)."""
        if self._closed:
            return
        self._closed = True
        async with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:
                pool.terminate()
        await self._redis.aclose()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._closed:
            raise ApiError(503, "the recorder is shutting down")
        async with self._pool_lock:
            if self._pool is None:
                pool = asyncpg.create_pool(
                    self._dsn,
                    min_size=POOL_MIN,
                    max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                    server_settings={
                        "search_path": quote_ident(self.schema),
                        "application_name": "vp-recorder-api",
                    },
                )
                try:
                    await pool
                except Exception as exc:
                    pool.terminate()
                    # unreachable, or refusing us (auth, missing database): the next request tries again
                    log.warning("recorder_api.postgres_unavailable", error=type(exc).__name__)
                    raise PostgresUnavailable() from exc
                self._pool = pool
            return self._pool

    async def run(self, query: Query[T]) -> T:
        """Run ``query`` on a pooled connection; PostgreSQL out of reach → ``PostgresUnavailable``."""
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                return await query(conn)
        except asyncpg.exceptions.UndefinedTableError as exc:
            # the schema is made by the recorder's Postgres store on its first connect
            raise PostgresUnavailable("the recorder's tables do not exist yet") from exc
        except _UNREACHABLE as exc:
            log.warning("recorder_api.postgres_unavailable", error=type(exc).__name__)
            raise PostgresUnavailable() from exc

    async def _load_scenario(self, robot: str, name: str) -> dict[str, Any] | None:
        return await self.run(lambda conn: get_scenario(conn, robot, name))

    # ---- a call's events ----------------------------------------------------------------------

    async def call_events(self, call_id: str) -> tuple[list[StoredEvent], str]:
        """The call's stored events and where they came from (``stream``, ``postgres`` or both).

        The stream is the log; PostgreSQL is asked only when the stream lacks the call's start
        (aged out, stream deleted, or not readable now). Both give the same ``seq`` to an event,
        so the transcript builder merges them without repeats.
        """
        from_stream = await self._stream_events(call_id)
        if from_stream and any(isinstance(e.message, CallStarted) for e in from_stream):
            return from_stream, "stream"
        try:
            from_postgres = await self.run(lambda conn: _postgres_events(conn, call_id))
        except PostgresUnavailable:
            if from_stream:
                return from_stream, "stream"  # a part of the call is better than none
            if from_stream is None:
                raise PostgresUnavailable("neither the event stream nor postgres can be read") from None
            raise
        if from_stream is None and not from_postgres:
            # the call may be in the stream, not yet written to PostgreSQL: not a 404
            raise ApiError(503, "the event stream cannot be read and postgres has no events of this call")
        sources = [name for name, found in (("stream", from_stream), ("postgres", from_postgres)) if found]
        return [*(from_stream or []), *from_postgres], "+".join(sources)

    async def _stream_events(self, call_id: str) -> list[StoredEvent] | None:
        """The call's events in the stream; None when the stream cannot be read now."""
        reader = self.reader
        if reader is None:
            return None  # the recorder has not started yet
        try:
            return await asyncio.wait_for(reader.read_call(call_id), STREAM_READ_TIMEOUT_S)
        except nats.js.errors.NotFoundError:
            return []  # no such stream (deleted by an operator): nothing of the call is in it
        except Exception as exc:
            log.warning("recorder_api.stream_unavailable", error=type(exc).__name__)
            return None


async def _postgres_events(conn: asyncpg.Connection, call_id: str) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    for row in await conn.fetch(_CALL_EVENTS, call_id):
        try:
            message = _event_decoder.decode(row["data"])
        except msgspec.DecodeError as exc:
            log.warning("recorder_api.bad_stored_event", seq=row["seq"], error=type(exc).__name__)
            continue
        if message.v > type(message).VERSION:
            continue  # written by a newer recorder: this one cannot read it
        events.append(StoredEvent(int(row["seq"]), str(row["subject"]), message))
    return events


# ---- query parameters ---------------------------------------------------------------------------


def _single_params(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key in request.query_params:
        if key not in allowed:
            raise ApiError(400, f"unknown query parameter {key!r}; known: {', '.join(allowed)}")
        values = request.query_params.getlist(key)
        if len(values) > 1:
            raise ApiError(400, f"query parameter {key!r} given more than once")
        params[key] = values[0]
    return params


def parse_limit(value: str | None) -> int:
    """A whole number from 1; more than ``MAX_LIMIT`` is capped."""
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {value[:20]!r}")
    return min(int(value), MAX_LIMIT)


def parse_before(value: str) -> datetime:
    """Unix milliseconds or an ISO 8601 time (no offset = UTC)."""
    text = value.strip().replace(" ", "+")  # an unescaped '+' of an offset arrives as a space
    try:
        if text.isascii() and text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        at = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise ApiError(
            400, f"before must be Unix milliseconds or an ISO 8601 time, got {value[:40]!r}"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _filter_value(params: dict[str, str], name: str, choices: Sequence[str] = ()) -> str | None:
    value = params.get(name, "")
    if not value:
        return None
    if choices and value not in choices:
        raise ApiError(400, f"{name} must be one of {', '.join(choices)}, got {value[:20]!r}")
    if len(value) > MAX_FILTER_CHARS:
        raise ApiError(400, f"{name} is longer than {MAX_FILTER_CHARS} characters")
    return value


def list_calls_query(params: dict[str, str]) -> tuple[str, list[object], int]:
    """SQL, its arguments and the page size of ``GET /calls`` (one row more: is there a next page)."""
    limit = parse_limit(params.get("limit"))
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    conditions: list[str] = []
    for column, choices in (("robot", ()), ("status", STATUSES), ("caller", ()), ("channel", CHANNELS)):
        value = _filter_value(params, column, choices)
        if value is not None:
            conditions.append(f"{column} = {arg(value)}")
    before_id = _filter_value(params, "before_id")
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
    sql = f"SELECT {_CALL_COLUMNS} FROM calls {where} {order}"
    return sql, args, limit


def _checked_call_id(request: Request) -> str:
    call_id = str(request.path_params["call_id"])
    try:
        return subjects.check_token(call_id)
    except subjects.SubjectError:
        raise ApiError(400, "call_id must be 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'") from None


def _checked_name(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    if not value or len(value) > MAX_FILTER_CHARS or not value.isprintable():
        raise ApiError(400, f"{name} must be 1 to {MAX_FILTER_CHARS} printable characters")
    return value


# ---- rows as JSON -------------------------------------------------------------------------------


def call_row(row: asyncpg.Record, role: Role = "operator") -> dict[str, Any]:
    item = dict(row.items())
    item["started_at"], item["ended_at"] = iso(row["started_at"]), iso(row["ended_at"])
    return redact_call(item, role)


def turn_row(row: asyncpg.Record, role: Role = "operator") -> dict[str, Any]:
    item = dict(row.items())
    item["speech_end_at"] = iso(row["speech_end_at"])
    return redact_turn(item, role)


# ---- the app ------------------------------------------------------------------------------------


def build_api(api: RecorderApi) -> Starlette:
    async def list_calls(request: Request) -> Response:
        role = api.auth.role(request)
        params = _single_params(request, LIST_PARAMS)
        if params.get("caller"):
            require_operator(role, "the caller filter")
        sql, args, limit = list_calls_query(params)
        rows = await api.run(lambda conn: conn.fetch(sql, *args))
        page = rows[:limit]
        more = len(rows) > limit
        return JSONResponse(
            {
                "calls": [call_row(r, role) for r in page],
                "limit": limit,
                # the next page: ?before=<next_before>&before_id=<next_before_id> (same filters)
                "next_before": page[-1]["started_at"].astimezone(UTC).isoformat() if more else None,
                "next_before_id": page[-1]["call_id"] if more else None,
            }
        )

    async def call_transcript(request: Request) -> Response:
        require_operator(api.auth.role(request), "a transcript")
        call_id = _checked_call_id(request)
        _single_params(request, ())
        events, source = await api.call_events(call_id)
        if not events:
            raise ApiError(404, f"no call {call_id!r} in the event stream or in postgres")
        return JSONResponse(build_transcript(events), headers={"Vp-Source": source})

    async def call_turns(request: Request) -> Response:
        role = api.auth.role(request)
        call_id = _checked_call_id(request)
        _single_params(request, ())

        async def query(conn: asyncpg.Connection) -> list[asyncpg.Record] | None:
            if not await conn.fetchval(_CALL_EXISTS, call_id):
                return None
            rows: list[asyncpg.Record] = await conn.fetch(_CALL_TURNS, call_id)
            return rows

        rows = await api.run(query)
        if rows is None:
            raise ApiError(404, f"no call {call_id!r} in postgres")
        return JSONResponse({"call_id": call_id, "turns": [turn_row(r, role) for r in rows]})

    async def scenario(request: Request) -> Response:
        api.auth.role(request)  # robot configuration, not personal: either role
        robot, name = _checked_name(request, "robot"), _checked_name(request, "name")
        _single_params(request, ())
        found = await api.scenarios.get(robot, name)
        if found is None:
            raise ApiError(404, f"no scenario {name!r} of robot {robot!r}")
        return JSONResponse(found)

    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    async def auth_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("recorder_api.failed", path=request.url.path, error=type(exc).__name__)
        return JSONResponse({"error": "internal error"}, status_code=500)

    return Starlette(
        routes=[
            Route("/calls", list_calls, methods=["GET"]),
            Route("/calls/{call_id}", call_transcript, methods=["GET"]),
            Route("/calls/{call_id}/turns", call_turns, methods=["GET"]),
            Route("/scenarios/{robot}/{name}", scenario, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: api_error,
            AuthError: auth_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
