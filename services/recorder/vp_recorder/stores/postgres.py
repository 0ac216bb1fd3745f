"""PostgreSQL: calls, their turns and every call event. Every write is idempotent.

A batch is one transaction of a fixed number of statements, however many events it holds: the
rows of its calls are claimed (advisory locks in one order, so recorders sharing the consumer
never deadlock), the events go into ``call_events`` keyed by (call id, stream sequence), then each
kind of event updates its call or turn rows in one ``executemany``, then the derived columns
(turns, barge-ins, errors, last prompt, voice-to-voice p50/max) of the calls whose batch events
change them (``FIGURE_TYPES``) are recomputed from what is stored, in one statement that reads only
those calls' figure events (a partial index) and turns. Recomputing instead of incrementing makes a
redelivered or out-of-order event harmless, and a late event (handled by another recorder after the
call ended) corrects them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import AsrFinal, CallEnded, CallStarted, ControlInterrupt, LlmDone, TurnMetrics
from vp_recorder.directory import record_caller, sync_scenarios
from vp_recorder.events import ms_to_datetime
from vp_recorder.migrate import apply_migrations
from vp_recorder.stored import StoredEvent

CONNECT_TIMEOUT_S = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COMMAND_TIMEOUT_S = 10.0

# a whole batch in one statement (column arrays)
_INSERT_EVENTS = """
INSERT INTO call_events (call_id, seq, type, turn_id, at, subject, data)
SELECT call_id, seq, type, turn_id, at, subject, data::jsonb
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[])
    AS e(call_id, seq, type, turn_id, at, subject, data)
ON CONFLICT (call_id, seq) DO NOTHING
"""

_UPSERT_STARTED = """
INSERT INTO calls (call_id, caller, robot, mode, channel, status, started_at, sample_rate, gateway_id)
VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8)
ON CONFLICT (call_id) DO UPDATE SET
    caller = EXCLUDED.caller, robot = EXCLUDED.robot, mode = EXCLUDED.mode,
    channel = EXCLUDED.channel, started_at = EXCLUDED.started_at, sample_rate = EXCLUDED.sample_rate,
    gateway_id = EXCLUDED.gateway_id, updated_at = now()
"""

_UPSERT_ENDED = """
INSERT INTO calls (call_id, status, started_at, ended_at, duration_sec, end_reason)
VALUES ($1, 'ended', $2, $3, $4, $5)
ON CONFLICT (call_id) DO UPDATE SET
    status = 'ended',
    ended_at = EXCLUDED.ended_at,
    duration_sec = COALESCE(EXCLUDED.duration_sec,
                            EXTRACT(EPOCH FROM EXCLUDED.ended_at - calls.started_at)::double precision),
    end_reason = EXCLUDED.end_reason,
    updated_at = now()
"""

_ENSURE_CALLS = """
INSERT INTO calls (call_id, started_at)
SELECT * FROM unnest($1::text[], $2::timestamptz[]) ON CONFLICT (call_id) DO NOTHING
"""

_UPSERT_TURN = """
INSERT INTO call_turns (call_id, turn_id, user_text, bot_text, interrupted, played_text, speech_end_at,
                        asr_ms, llm_first_sentence_ms, tts_first_audio_ms, voice_to_voice_ms,
                        asr_latency_ms, llm_latency_ms, tts_latency_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (call_id, turn_id) DO UPDATE SET
    user_text = EXCLUDED.user_text, bot_text = EXCLUDED.bot_text, interrupted = EXCLUDED.interrupted,
    played_text = EXCLUDED.played_text, speech_end_at = EXCLUDED.speech_end_at,
    asr_ms = EXCLUDED.asr_ms, llm_first_sentence_ms = EXCLUDED.llm_first_sentence_ms,
    tts_first_audio_ms = EXCLUDED.tts_first_audio_ms, voice_to_voice_ms = EXCLUDED.voice_to_voice_ms,
    asr_latency_ms = EXCLUDED.asr_latency_ms, llm_latency_ms = EXCLUDED.llm_latency_ms,
    tts_latency_ms = EXCLUDED.tts_latency_ms
"""

# a caller turn the gateway merged into a later one (control.interrupt reason "continued") before
# the caller heard any reply is no turn of its own: its words are in the later turn's transcript
_MERGED_AWAY = """
    EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = $1 AND e.turn_id = $2
            AND e.type = 'control.interrupt' AND e.data->>'reason' = 'continued')
    AND NOT EXISTS (SELECT 1 FROM call_events e WHERE e.call_id = $1 AND e.turn_id = $2
                    AND e.type = 'turn.metrics')
"""

# providers and usage come from the stages themselves, possibly before the gateway's account
_UPSERT_TURN_LLM = f"""
INSERT INTO call_turns (call_id, turn_id, llm_provider, prompt_tokens, completion_tokens)
SELECT $1::text, $2::text, $3::text, $4::integer, $5::integer WHERE NOT ({_MERGED_AWAY})
ON CONFLICT (call_id, turn_id) DO UPDATE SET
    llm_provider = EXCLUDED.llm_provider, prompt_tokens = EXCLUDED.prompt_tokens,
    completion_tokens = EXCLUDED.completion_tokens
"""

_UPSERT_TURN_ASR = f"""
INSERT INTO call_turns (call_id, turn_id, asr_provider)
SELECT $1::text, $2::text, $3::text WHERE NOT ({_MERGED_AWAY})
ON CONFLICT (call_id, turn_id) DO UPDATE SET asr_provider = EXCLUDED.asr_provider
"""

_DELETE_MERGED_AWAY = f"""
DELETE FROM call_turns WHERE call_id = $1 AND turn_id = $2 AND {_MERGED_AWAY}
"""

# one lock per call, taken in one order by every recorder (ids hashed to the advisory lock's key)
_CLAIM_CALLS = """
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended(c, 0) AS k FROM unnest($1::text[]) AS c ORDER BY 1
) AS claimed
"""

# the event types the derived columns of ``calls`` come from (also the predicate of the partial index
# call_events_figures_idx, migration 006, which the queries reach by naming them)
FIGURE_TYPES = ("turn.metrics", "control.interrupt", "stage.error", "prompt.switched")
_FIGURE_TYPES_SQL = ", ".join(f"'{t}'" for t in FIGURE_TYPES)

# per call, only its figure events (the partial index) and its turns (the primary key): a call's
# other events, most of it, are never read, and no plan scans a whole table
_REFRESH_CALLS = f"""
WITH ids AS (SELECT DISTINCT unnest($1::text[]) AS call_id)
UPDATE calls c SET
    turns = ev.turns,
    barge_ins = ev.barge_ins,
    errors = ev.errors,
    last_prompt = COALESCE(ev.last_prompt, c.last_prompt),
    voice_to_voice_p50_ms = tu.p50,
    voice_to_voice_max_ms = tu.max,
    updated_at = now()
FROM ids
CROSS JOIN LATERAL (
    SELECT count(DISTINCT e.turn_id) FILTER (WHERE e.type = 'turn.metrics') AS turns,
           count(DISTINCT e.turn_id) FILTER (
               WHERE e.type = 'control.interrupt' AND e.data->>'by_turn_id' <> ''
                 AND COALESCE(e.data->>'reason', 'barge_in') = 'barge_in') AS barge_ins,
           count(*) FILTER (WHERE e.type = 'stage.error') AS errors,
           (array_agg(e.data->>'to_prompt' ORDER BY e.at DESC, e.seq DESC)
                FILTER (WHERE e.type = 'prompt.switched'))[1] AS last_prompt
    FROM call_events e WHERE e.call_id = ids.call_id AND e.type IN ({_FIGURE_TYPES_SQL})
) AS ev
CROSS JOIN LATERAL (
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY t.voice_to_voice_ms)) AS p50,
           max(t.voice_to_voice_ms) AS max
    FROM call_turns t WHERE t.call_id = ids.call_id
) AS tu
WHERE c.call_id = ids.call_id
"""

# call.started before call.ended: the ended call's duration may come from its start
_STATEMENT_ORDER = (
    _UPSERT_STARTED,
    _UPSERT_ENDED,
    _UPSERT_TURN,
    _UPSERT_TURN_LLM,
    _UPSERT_TURN_ASR,
    _DELETE_MERGED_AWAY,
)

_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,  # connection closed or in a bad state
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.DeadlockDetectedError,  # a writer outside the recorder's lock order
)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresStore:
    name = "postgres"

    def __init__(self, dsn: str, schema: str = "public", robots_dir: Path | None = None) -> None:
        self._dsn = dsn
        self.schema = schema
        # the robots' prompts are synced into ``scenarios`` on every connect (unchanged ones cost a
        # hash comparison)
        self.robots_dir = robots_dir
        self._conn: asyncpg.Connection | None = None

    def accepts(self, message: object) -> bool:
        return True  # every event goes into call_events

    async def connect(self) -> None:
        await self.close()
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S)
        try:
            if self.schema != "public":
                # another recorder may create it at the same moment
                with contextlib.suppress(
                    asyncpg.exceptions.UniqueViolationError, asyncpg.exceptions.DuplicateSchemaError
                ):
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.schema)}")
            await conn.execute(f"SET search_path TO {quote_ident(self.schema)}")
            await apply_migrations(conn)
            if self.robots_dir is not None:
                await sync_scenarios(conn, self.robots_dir)
        except BaseException:
            await conn.close(timeout=2)
            raise
        self._conn = conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, _TRANSIENT)

    async def write(self, events: Sequence[StoredEvent]) -> None:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError("postgres not connected")
        earliest = _earliest(events)
        call_ids = sorted(earliest)
        statements = _statements(events)
        async with conn.transaction():
            await conn.execute(_CLAIM_CALLS, call_ids)
            await conn.execute(_INSERT_EVENTS, *zip(*(_event_row(e) for e in events), strict=True))
            # any event may come before call.started (several recorders, redelivery): the row first
            await conn.execute(_ENSURE_CALLS, call_ids, [ms_to_datetime(earliest[c]) for c in call_ids])
            for statement, rows in statements.items():
                await conn.executemany(statement, rows)
            for event in events:
                started = event.message
                if isinstance(started, CallStarted) and started.channel == "phone":
                    at = ms_to_datetime(started.ts_ms) or _EPOCH
                    await record_caller(conn, started.caller, started.call_id, at)
            # only a figure event changes a call's derived columns (a turn.metrics its turn's
            # voice-to-voice, a control.interrupt a merged-away turn): the other calls keep theirs
            refreshed = sorted({e.call_id for e in events if e.message.type_name in FIGURE_TYPES})
            if refreshed:
                await conn.execute(_REFRESH_CALLS, refreshed)


def _statements(events: Sequence[StoredEvent]) -> dict[str, list[tuple[object, ...]]]:
    """Per statement (in ``_STATEMENT_ORDER``), its rows in stream order. Each statement sets
    columns no later one sets (or decides from ``call_events``, already complete for the batch), so
    running them statement by statement gives what running them event by event would."""
    rows: dict[str, list[tuple[object, ...]]] = {statement: [] for statement in _STATEMENT_ORDER}
    for event in events:
        found = _upsert_of(event.message)
        if found is not None:
            rows[found[0]].append(found[1])
    return {statement: found for statement, found in rows.items() if found}


def _upsert_of(msg: object) -> tuple[str, tuple[object, ...]] | None:
    if isinstance(msg, CallStarted):
        return _UPSERT_STARTED, (
            msg.call_id, msg.caller, msg.robot, msg.mode, msg.channel, ms_to_datetime(msg.ts_ms),
            msg.sample_rate, msg.gateway_id,
        )  # fmt: skip
    if isinstance(msg, CallEnded):
        ended_at = ms_to_datetime(msg.ts_ms)
        duration = msg.duration_ms / 1000 if msg.duration_ms > 0 else None
        started_at = ms_to_datetime(msg.ts_ms - msg.duration_ms)
        return _UPSERT_ENDED, (msg.call_id, started_at, ended_at, duration, msg.reason)
    if isinstance(msg, TurnMetrics):
        fig = turn_figures(msg)
        return _UPSERT_TURN, (
            msg.call_id, msg.turn_id, msg.user_text, msg.bot_text, msg.interrupted, msg.played_text,
            ms_to_datetime(msg.speech_end_ts_ms), fig["asr_ms"], fig["llm_first_sentence_ms"],
            fig["tts_first_audio_ms"], fig["voice_to_voice_ms"], fig["asr_latency_ms"],
            fig["llm_latency_ms"], fig["tts_latency_ms"],
        )  # fmt: skip
    if isinstance(msg, LlmDone):
        row = (msg.call_id, msg.turn_id, msg.provider, msg.prompt_tokens, msg.completion_tokens)
        return _UPSERT_TURN_LLM, row
    if isinstance(msg, AsrFinal):
        return _UPSERT_TURN_ASR, (msg.call_id, msg.turn_id, msg.provider)
    if isinstance(msg, ControlInterrupt) and msg.reason == "continued":
        return _DELETE_MERGED_AWAY, (msg.call_id, msg.turn_id)
    return None


def _earliest(events: Sequence[StoredEvent]) -> dict[str, int]:
    """Each call's earliest known moment in the batch (a call.ended implies its start)."""
    found: dict[str, int] = {}
    for event in events:
        msg = event.message
        ts = msg.ts_ms - msg.duration_ms if isinstance(msg, CallEnded) else msg.ts_ms
        found[msg.call_id] = min(ts, found.get(msg.call_id, ts))
    return found


def _event_row(event: StoredEvent) -> tuple[object, ...]:
    msg = event.message
    at = ms_to_datetime(msg.ts_ms) or _EPOCH
    data = msgspec.json.encode(msg).decode()
    return (event.call_id, event.seq, msg.type_name, getattr(msg, "turn_id", ""), at, event.subject, data)
