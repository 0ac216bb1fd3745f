"""Console search (``GET /calls?q=...``) over a large call history: query time per kind of search.

Set-up: a schema of its own in the PostgreSQL on loopback (``--dsn``, default ``POSTGRES_DSN`` or
the local server), the recorder's migrations applied, then ``--calls`` calls of ``--turns`` turns
each, filled with COPY: Russian phrases from a small vocabulary (every word is common), callers'
numbers, a few calls with a rare word in one turn. The SQL is the recorder's own
(``vp_recorder.call_query.list_calls_query``: the newest 50 calls matching ``q``, planned as
the recorder API plans it), run ``--repeat``
times per search; printed: p50 / max in ms and the rows found, with the search indexes (when the
migrations made them) and, with ``--compare``, without them (dropped, then made again).

The searches: a common word (matches are found at once walking the newest calls), a rare word (5
calls), a word no call has (the worst case: every call is looked at), a fragment of a caller's
number and of a call id.

    .venv/bin/python bench/bench_call_search.py [--calls 100000] [--turns 8] [--repeat 5] [--compare]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from vp_recorder.call_query import PLANNER_SETTINGS, list_calls_query
from vp_recorder.migrate import apply_migrations
from vp_recorder.stores.postgres import quote_ident

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
VOCABULARY = (
    "здравствуйте добрый день хочу узнать про доставку заказа когда привезут можно ли оплатить "
    "картой курьеру сколько стоит подключить тариф интернет телефон спасибо до свидания перезвоните "
    "пожалуйста оператор номер договора адрес квартира подъезд время удобно завтра сегодня вечером"
)
WORDS = VOCABULARY.split(" ")
RARE_WORD = "абракадабра"
RARE_CALLS = 5
SEARCH_INDEXES = (
    "calls_call_id_trgm_idx",
    "calls_caller_trgm_idx",
    "call_turns_user_text_trgm_idx",
    "call_turns_bot_text_trgm_idx",
)


def phrase(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))


async def fill(conn: asyncpg.Connection, calls: int, turns: int, rng: random.Random) -> list[str]:
    """``calls`` ended calls, the newest first in time; returns their ids (oldest first)."""
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / calls
    ids = [f"fs-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}" for _ in range(calls)]
    rare = set(rng.sample(range(calls), RARE_CALLS))
    call_rows = []
    turn_rows = []
    for index, call_id in enumerate(ids):
        at = start + step * index
        caller = "7" + "".join(rng.choice("0123456789") for _ in range(10))
        call_rows.append((call_id, caller, "bench", "phone", "ended", at, at + timedelta(seconds=60), turns))
        rare_turn = rng.randrange(turns) if index in rare else -1
        for turn in range(turns):
            user = phrase(rng)
            if turn == rare_turn:
                user = f"{user} {RARE_WORD}"
            turn_rows.append((call_id, f"t{turn}", user, phrase(rng)))
    await conn.copy_records_to_table(
        "calls",
        records=call_rows,
        columns=["call_id", "caller", "robot", "channel", "status", "started_at", "ended_at", "turns"],
    )
    await conn.copy_records_to_table(
        "call_turns", records=turn_rows, columns=["call_id", "turn_id", "user_text", "bot_text"]
    )
    await conn.execute("ANALYZE calls; ANALYZE call_turns")
    return ids


async def time_searches(conn: asyncpg.Connection, searches: dict[str, str], repeat: int) -> dict[str, str]:
    lines = {}
    for label, q in searches.items():
        sql, args, _ = list_calls_query({"q": q})
        times = []
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(await conn.fetch(sql, *args))
            times.append((time.perf_counter() - t0) * 1000)
        lines[label] = f"p50 {statistics.median(times):9.1f}  max {max(times):9.1f} ms  ({rows} rows)"
    return lines


async def index_definitions(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        " AND indexname = ANY($1::text[])",
        list(SEARCH_INDEXES),
    )
    return {r["indexname"]: r["indexdef"] for r in rows}


async def run(dsn: str, calls: int, turns: int, repeat: int, compare: bool) -> None:
    rng = random.Random(7)
    schema = f"bench_search_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {quote_ident(schema)}")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema, **PLANNER_SETTINGS})
    try:
        await apply_migrations(conn)
        t0 = time.perf_counter()
        indexes = await index_definitions(conn)
        for name in indexes:  # filled faster without them, then made as a migration on a big table would
            await conn.execute(f"DROP INDEX {quote_ident(name)}")
        ids = await fill(conn, calls, turns, rng)
        filled_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for definition in indexes.values():
            await conn.execute(definition)
        indexed_s = time.perf_counter() - t0
        caller = await conn.fetchval("SELECT caller FROM calls ORDER BY started_at LIMIT 1")
        searches = {
            "common word": "доставку",
            "rare word": RARE_WORD,
            "word no call has": "холодильник",
            "caller number fragment": caller[3:10],
            "call id fragment": ids[len(ids) // 3][3:13],
        }
        print(f"call search: {calls} calls x {turns} turns (filled in {filled_s:.1f} s)")
        if indexes:
            print(f"  search indexes made in {indexed_s:.1f} s: {', '.join(indexes)}")
        else:
            print("  no search indexes (pg_trgm not available, or migrations without them)")
        with_indexes = await time_searches(conn, searches, repeat)
        without = {}
        if compare and indexes:
            for name in indexes:
                await conn.execute(f"DROP INDEX {quote_ident(name)}")
            without = await time_searches(conn, searches, repeat)
            for definition in indexes.values():
                await conn.execute(definition)
        for label in searches:
            print(f"  {label:24} {with_indexes[label]}")
            if label in without:
                print(f"  {'  (without the indexes)':24} {without[label]}")
    finally:
        await conn.close()
        await admin.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=os.environ.get("POSTGRES_DSN", DEFAULT_DSN))
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="also time the searches without the indexes")
    args = parser.parse_args()
    asyncio.run(run(args.dsn, args.calls, args.turns, args.repeat, args.compare))


if __name__ == "__main__":
    main()
