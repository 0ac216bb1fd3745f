"""Place calls from the caller host and read what came of them (the caller process and the record)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tests.cluster.platform import REPO, ClusterPlatform

# (call index, call_id, turn, moment) -> None; runs in the test's loop while the calls go on
Moment = Callable[[int, str, int, str], Awaitable[None]]


@dataclass
class CallBatch:
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    call_ids: dict[int, str] = field(default_factory=dict)

    def failures(self, turns: int, fallbacks_per_call: int = 0) -> list[str]:
        """What went wrong with each call that did not get every reply played to its end.

        ``fallbacks_per_call``: turns of a call that may end with the robot's fallback line instead
        (a fault that stalls the bus longer than the reply deadline); the call must go on after it,
        so its last turn is always played.
        """
        bad = []
        for index, result in sorted(self.results.items()):
            if "error" in result:
                bad.append(f"call {index}: {result['error']}")
                continue
            outcomes = result["outcomes"]
            fallbacks = outcomes.count("fallback")
            others = [o for o in outcomes if o not in ("played", "fallback")]
            last_played = bool(outcomes) and outcomes[-1] == "played"
            if result["answered"] != turns or others or fallbacks > fallbacks_per_call or not last_played:
                bad.append(f"call {index} {result['call_id']}: {result}")
        return bad


async def place_calls(
    platform: ClusterPlatform, calls: int, turns: int, on_moment: Moment | None = None, stagger_s: float = 0.5
) -> CallBatch:
    """Run ``calls`` conversations from the caller host to their end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = [
        *platform.host("caller").exec_prefix(),
        sys.executable, "-m", "tests.cluster.caller", platform.url,
        "--calls", str(calls), "--turns", str(turns), "--stagger", str(stagger_s),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    batch = CallBatch()
    tasks: list[asyncio.Task[None]] = []
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = json.loads(raw)
        index = int(line["call"])
        if "result" in line:
            batch.results[index] = line["result"]
            continue
        batch.call_ids[index] = line["call_id"]
        if on_moment is not None:
            tasks.append(asyncio.create_task(on_moment(index, line["call_id"], line["turn"], line["moment"])))
    stderr = await proc.stderr.read() if proc.stderr is not None else b""
    await proc.wait()
    for task in tasks:
        await task  # a fault that failed fails the test here
    if len(batch.results) != calls:
        tail = stderr.decode(errors="replace")[-3000:]
        raise AssertionError(f"caller ended with {len(batch.results)}/{calls} results:\n{tail}")
    return batch


async def recorded(dsn: str, call_id: str, timeout_s: float = 30.0) -> tuple[str, list[asyncpg.Record]]:
    """The call's recorded status and its caller turns (greeting left out), once it is ended."""
    conn = await asyncpg.connect(dsn)
    try:
        status = ""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            row = await conn.fetchrow("select status from calls where call_id=$1", call_id)
            status = row["status"] if row else ""
            if status == "ended":
                break
            await asyncio.sleep(0.2)
        turns = await conn.fetch(
            "select turn_id, user_text, bot_text, interrupted from call_turns "
            "where call_id=$1 order by created_at",
            call_id,
        )
    finally:
        await conn.close()
    return status, [t for t in turns if not t["turn_id"].endswith("-greeting")]


async def unrecorded(dsn: str, batch: CallBatch, turns: int) -> list[str]:
    """Calls of ``batch`` whose record is not ended with ``turns`` whole caller turns."""
    missing = []
    for result in batch.results.values():
        call_id = result.get("call_id", "")
        if not call_id:
            missing.append(f"no call id: {result}")
            continue
        status, rows = await recorded(dsn, call_id)
        whole = [t for t in rows if t["bot_text"] and not t["interrupted"]]
        if status != "ended" or len(whole) != turns:
            summary = [(t["user_text"], bool(t["bot_text"]), t["interrupted"]) for t in rows]
            missing.append(f"{call_id}: status {status!r}, turns {summary}")
    return missing
