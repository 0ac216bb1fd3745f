"""The recorder's read-only HTTP API for operators and dashboards (JSON, next to /health and /metrics).

- ``GET /calls``: latest calls from PostgreSQL ``calls`` (filters and search: ``call_query``; keyset
  pagination by ``started_at``, ties broken by ``call_id``);
- ``GET /calls/{call_id}``: the call's transcript document rebuilt from its stored events: from the
  JetStream stream, and from PostgreSQL ``call_events`` for what the stream no longer holds (events
  older than the stream's max age); response header ``Vp-Source`` says which answered;
- ``GET /calls/{call_id}/turns``: the call's row (``call``) and its per-turn figures (``call_turns``)
  in the order the turns began;
- ``GET /scenarios/{robot}/{name}``: one scenario through the Redis cache (``scenario:{robot}:{name}``);
- the console, recordings, live events and latency statistics: ``console_routes``.

Every route needs a bearer token (``api_auth``): the operator token sees everything, the read-only
token gets no caller numbers (null; no ``caller`` filter), no transcripts (403) and turns without
their texts.

The PostgreSQL pool is made on the first request that needs it, so the recorder starts (and records
into the stream) while PostgreSQL is down; a request that cannot reach it gets 503 with a JSON error.
Errors never carry exception texts (a DSN could be in one): clients get a fixed message, logs the type.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
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
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from voiceplatform import subjects
from voiceplatform.wire import CallStarted
from voiceplatform.wire.codec import MESSAGE_TYPES
from vp_recorder.api_auth import ApiAuth, AuthError, Role, redact_call, redact_turn, require_operator
from vp_recorder.api_json import JSONResponse, iso
from vp_recorder.call_query import (
    CALL_COLUMNS,
    LIST_PARAMS,
    MAX_FILTER_CHARS,
    PERSONAL_PARAMS,
    PLANNER_SETTINGS,
    ApiError,
    list_calls_query,
)
from vp_recorder.call_query import MAX_LIMIT as MAX_LIMIT  # re-exported: the API's page cap
from vp_recorder.directory import get_scenario
from vp_recorder.live import LiveEvents
from vp_recorder.recordings import RecordingFiles, add_recording_state
from vp_recorder.scenario_cache import ScenarioCache
from vp_recorder.settings import RecorderSettings
from vp_recorder.stored import CallEventReader, StoredEvent
from vp_recorder.stores.postgres import quote_ident
from vp_recorder.transcript import build_transcript

log = structlog.get_logger("vp_recorder.api")

POOL_MIN, POOL_MAX = 1, 4
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
STREAM_READ_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 2.0
RETRY_AFTER_S = "5"

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

_CALL_EVENTS = "SELECT seq, subject, data::text AS data FROM call_events WHERE call_id = $1 ORDER BY seq"
_CALL_ROW = f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id = $1"
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


class PostgresUnavailable(ApiError):
    def __init__(self, message: str = "postgres is unavailable") -> None:
        super().__init__(503, message)


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
        # call recordings under VP_RECORDINGS_DIR; live events once the recorder is connected
        self.files = RecordingFiles(settings.recordings_dir)
        self.live: LiveEvents | None = None

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
                        **PLANNER_SETTINGS,
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


def single_params(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key in request.query_params:
        if key not in allowed:
            raise ApiError(400, f"unknown query parameter {key!r}; known: {', '.join(allowed)}")
        values = request.query_params.getlist(key)
        if len(values) > 1:
            raise ApiError(400, f"query parameter {key!r} given more than once")
        params[key] = values[0]
    return params


def checked_call_id(request: Request) -> str:
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


def build_api(api: RecorderApi, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The API's app; ``extra_routes`` (the console, recordings, live events) share its errors."""

    async def list_calls(request: Request) -> Response:
        role = api.auth.role(request)
        params = single_params(request, LIST_PARAMS)
        for name in PERSONAL_PARAMS:
            if params.get(name):
                require_operator(role, f"the {name!r} filter")
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
        call_id = checked_call_id(request)
        single_params(request, ())
        events, source = await api.call_events(call_id)
        if not events:
            raise ApiError(404, f"no call {call_id!r} in the event stream or in postgres")
        document = build_transcript(events)
        with contextlib.suppress(PostgresUnavailable):  # left out while PostgreSQL cannot say
            await add_recording_state(api.run, api.files, call_id, document["recordings"])
        return JSONResponse(document, headers={"Vp-Source": source})

    async def call_turns(request: Request) -> Response:
        role = api.auth.role(request)
        call_id = checked_call_id(request)
        single_params(request, ())

        async def query(conn: asyncpg.Connection) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
            call = await conn.fetchrow(_CALL_ROW, call_id)
            if call is None:
                return None
            return call, await conn.fetch(_CALL_TURNS, call_id)

        found = await api.run(query)
        if found is None:
            raise ApiError(404, f"no call {call_id!r} in postgres")
        call, rows = found
        return JSONResponse(
            {"call_id": call_id, "call": call_row(call, role), "turns": [turn_row(r, role) for r in rows]}
        )

    async def scenario(request: Request) -> Response:
        api.auth.role(request)  # robot configuration, not personal: either role
        robot, name = _checked_name(request, "robot"), _checked_name(request, "name")
        single_params(request, ())
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
            *extra_routes,
        ],
        exception_handlers={
            ApiError: api_error,
            AuthError: auth_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
