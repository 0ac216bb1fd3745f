"""PostgreSQL: one row per call, one per turn. Every write is an idempotent upsert.

Events of one call can arrive out of order (several recorders share the queue group), so any event
first makes sure its call row exists, and ``call.started`` fills the row in without undoing an end.
"""

from __future__ import annotations

import contextlib

import asyncpg

from voiceplatform.wire import CallEnded, CallStarted, Message, TurnMetrics
from vp_recorder.events import ms_to_datetime, turn_latencies
from vp_recorder.migrate import apply_migrations
from vp_recorder.writer import Record

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0

_UPSERT_STARTED = """
INSERT INTO calls (call_id, caller, robot, mode, channel, status, started_at)
VALUES ($1, $2, $3, $4, $5, 'active', $6)
ON CONFLICT (call_id) DO UPDATE SET
    caller = EXCLUDED.caller, robot = EXCLUDED.robot, mode = EXCLUDED.mode,
    channel = EXCLUDED.channel, started_at = EXCLUDED.started_at, updated_at = now()
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
    turns = (SELECT count(*) FROM call_turns t WHERE t.call_id = calls.call_id),
    updated_at = now()
"""

_ENSURE_CALL = """
INSERT INTO calls (call_id, started_at) VALUES ($1, $2) ON CONFLICT (call_id) DO NOTHING
"""

_UPSERT_TURN = """
INSERT INTO call_turns (call_id, turn_id, user_text, bot_text, interrupted, played_text, speech_end_at,
                        asr_ms, llm_first_sentence_ms, tts_first_audio_ms, voice_to_voice_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (call_id, turn_id) DO UPDATE SET
    user_text = EXCLUDED.user_text, bot_text = EXCLUDED.bot_text, interrupted = EXCLUDED.interrupted,
    played_text = EXCLUDED.played_text, speech_end_at = EXCLUDED.speech_end_at,
    asr_ms = EXCLUDED.asr_ms, llm_first_sentence_ms = EXCLUDED.llm_first_sentence_ms,
    tts_first_audio_ms = EXCLUDED.tts_first_audio_ms, voice_to_voice_ms = EXCLUDED.voice_to_voice_ms
"""

_COUNT_TURNS = """
UPDATE calls SET turns = (SELECT count(*) FROM call_turns t WHERE t.call_id = $1), updated_at = now()
WHERE call_id = $1
"""

_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,  # connection closed or in a bad state
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresStore:
    name = "postgres"

    def __init__(self, dsn: str, schema: str = "public") -> None:
        self._dsn = dsn
        self.schema = schema
        self._conn: asyncpg.Connection | None = None

    def accepts(self, message: Message) -> bool:
        return isinstance(message, CallStarted | CallEnded | TurnMetrics)

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

    async def write(self, record: Record) -> None:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError("postgres not connected")
        msg = record.message
        if isinstance(msg, CallStarted):
            await conn.execute(
                _UPSERT_STARTED,
                msg.call_id,
                msg.caller,
                msg.robot,
                msg.mode,
                msg.channel,
                ms_to_datetime(msg.ts_ms),
            )
        elif isinstance(msg, CallEnded):
            ended_at = ms_to_datetime(msg.ts_ms)
            duration = msg.duration_ms / 1000 if msg.duration_ms > 0 else None
            started_at = ms_to_datetime(msg.ts_ms - msg.duration_ms)
            await conn.execute(_UPSERT_ENDED, msg.call_id, started_at, ended_at, duration, msg.reason)
        elif isinstance(msg, TurnMetrics):
            await self._write_turn(conn, msg)

    async def _write_turn(self, conn: asyncpg.Connection, m: TurnMetrics) -> None:
        lat = turn_latencies(m)
        async with conn.transaction():
            await conn.execute(_ENSURE_CALL, m.call_id, ms_to_datetime(m.speech_end_ts_ms or m.ts_ms))
            await conn.execute(
                _UPSERT_TURN,
                m.call_id,
                m.turn_id,
                m.user_text,
                m.bot_text,
                m.interrupted,
                m.played_text,
                ms_to_datetime(m.speech_end_ts_ms),
                lat["asr_ms"],
                lat["llm_first_sentence_ms"],
                lat["tts_first_audio_ms"],
                lat["voice_to_voice_ms"],
            )
            await conn.execute(_COUNT_TURNS, m.call_id)
