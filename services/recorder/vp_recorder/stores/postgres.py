"""PostgreSQL: calls, their turns and every call event. Every write is idempotent.

A batch is one call of ``record_batch`` (migration 007), one round trip however many events it
holds: the rows of its calls are claimed (advisory locks in one order, so recorders sharing the
consumer never deadlock), the events go into ``call_events`` keyed by (call id, stream sequence),
then each kind of event updates its call or turn rows, then the derived columns (turns, barge-ins,
errors, last prompt, voice-to-voice p50/max) of the calls whose batch events change them
(``FIGURE_TYPES``) are recomputed from what is stored, reading only those calls' figure events (a
partial index) and turns. Recomputing instead of incrementing makes a redelivered or out-of-order
event harmless, and a late event (handled by another recorder after the call ended) corrects them.
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
from vp_recorder.directory import sync_scenarios
from vp_recorder.events import ms_to_datetime
from vp_recorder.migrate import apply_migrations
from vp_recorder.stored import StoredEvent

CONNECT_TIMEOUT_S = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COMMAND_TIMEOUT_S = 10.0

# the whole batch in one round trip: migration 007 holds the SQL (claim, events, calls and turns
# one statement per kind of row, a row's last account winning; callers; derived columns)
_RECORD_BATCH = """
SELECT record_batch($1::batch_event[], $2::text[], $3::timestamptz[], $4::batch_started[],
                    $5::batch_ended[], $6::batch_turn[], $7::batch_turn_llm[], $8::batch_turn_asr[],
                    $9::batch_turn_ref[], $10::text[])
"""

# the kinds of row record_batch takes after its events and calls, in its argument order
_KINDS = ("started", "ended", "turns", "turns_llm", "turns_asr", "merged")

# the event types the derived columns of ``calls`` come from: a batch holding one recomputes its
# calls' columns (the list is also the predicate of the partial index call_events_figures_idx of
# migration 006, which record_batch reaches by naming the same types)
FIGURE_TYPES = ("turn.metrics", "control.interrupt", "stage.error", "prompt.switched")

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
    live = False
    # every event; and the call ledger counts on one consumer reading them all
    stream_subjects = None

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
        rows = _rows(events)
        # only a figure event changes a call's derived columns (a turn.metrics its turn's
        # voice-to-voice, a control.interrupt a merged-away turn): the other calls keep theirs
        refreshed = sorted({e.call_id for e in events if e.message.type_name in FIGURE_TYPES})
        await conn.execute(
            _RECORD_BATCH,
            [_event_row(e) for e in events],
            call_ids,
            [ms_to_datetime(earliest[c]) for c in call_ids],
            *(rows[kind] for kind in _KINDS),
            refreshed,
        )


def _rows(events: Sequence[StoredEvent]) -> dict[str, list[tuple[object, ...]]]:
    """Per kind of row (``_KINDS``), its rows in stream order."""
    rows: dict[str, list[tuple[object, ...]]] = {kind: [] for kind in _KINDS}
    for event in events:
        found = _row_of(event.message)
        if found is not None:
            rows[found[0]].append(found[1])
    return rows


def _row_of(msg: object) -> tuple[str, tuple[object, ...]] | None:
    if isinstance(msg, CallStarted):
        return "started", (
            msg.call_id, msg.caller, msg.robot, msg.mode, msg.channel, ms_to_datetime(msg.ts_ms),
            msg.sample_rate, msg.gateway_id,
        )  # fmt: skip
    if isinstance(msg, CallEnded):
        ended_at = ms_to_datetime(msg.ts_ms)
        duration = msg.duration_ms / 1000 if msg.duration_ms > 0 else None
        started_at = ms_to_datetime(msg.ts_ms - msg.duration_ms)
        return "ended", (msg.call_id, started_at, ended_at, duration, msg.reason)
    if isinstance(msg, TurnMetrics):
        fig = turn_figures(msg)
        return "turns", (
            msg.call_id, msg.turn_id, msg.user_text, msg.bot_text, msg.interrupted, msg.played_text,
            ms_to_datetime(msg.speech_end_ts_ms), fig["asr_ms"], fig["llm_first_sentence_ms"],
            fig["tts_first_audio_ms"], fig["voice_to_voice_ms"], fig["asr_latency_ms"],
            fig["llm_latency_ms"], fig["tts_latency_ms"],
        )  # fmt: skip
    if isinstance(msg, LlmDone):
        return "turns_llm", (msg.call_id, msg.turn_id, msg.provider, msg.prompt_tokens, msg.completion_tokens)
    if isinstance(msg, AsrFinal):
        return "turns_asr", (msg.call_id, msg.turn_id, msg.provider)
    if isinstance(msg, ControlInterrupt) and msg.reason == "continued":
        return "merged", (msg.call_id, msg.turn_id)
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
