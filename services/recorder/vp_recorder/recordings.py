"""Call recordings on the recorder's side: which files a call has, serving one, deleting old ones.

The gateways write the files (``voiceplatform.gateway.recording``) and announce them with
``call.recording``; PostgreSQL's view ``call_recordings`` (migration 005) lists them per call from
the stored events, and ``recording_deletions`` holds the files the retention sweeper removed. The
recorder serves and deletes only files under its ``VP_RECORDINGS_DIR``: a path from an event is
never trusted to point anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog
from prometheus_client import Counter

from voiceplatform.gateway.recording import PART_SUFFIX
from vp_recorder.api_json import iso

log = structlog.get_logger("vp_recorder.recordings")

RECORDINGS_DELETED = Counter(
    "vp_recorder_recordings_deleted_total", "Call recordings deleted by the retention sweeper", ["outcome"]
)
MAX_PER_SWEEP = 1000
FIRST_SWEEP_AFTER_S = 60.0

T = TypeVar("T")
Run = Callable[[Callable[[asyncpg.Connection], Awaitable[T]]], Awaitable[T]]

_OF_CALL = """
SELECT path, format, channels, started_at, stopped_at, duration_ms, deleted_at
FROM call_recordings WHERE call_id = $1 ORDER BY started_at, path
"""
_EXPIRED = """
SELECT call_id, path FROM call_recordings
WHERE deleted_at IS NULL AND started_at < $1 AND left(path, length($3)) = $3
ORDER BY started_at LIMIT $2
"""
_MARK_GONE = """
INSERT INTO recording_deletions (path, reason) VALUES ($1, 'retention') ON CONFLICT (path) DO NOTHING
"""


class RecordingFiles:
    """The recordings folder as the recorder sees it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def local(self, path: str) -> Path | None:
        """The file of ``path`` when it lies inside the folder, else None."""
        if not path:
            return None
        target = Path(path)
        target = (target if target.is_absolute() else self.root / target).resolve()
        return target if target.is_relative_to(self.root) else None


async def recordings_of(conn: asyncpg.Connection, call_id: str) -> list[dict[str, Any]]:
    """The call's recordings, oldest first: path, format, channels, times, ``gone`` when deleted."""
    return [
        {
            "path": row["path"],
            "format": row["format"],
            "channels": row["channels"],
            "started_at": iso(row["started_at"]),
            "stopped_at": iso(row["stopped_at"]),
            "duration_ms": row["duration_ms"],
            "deleted_at": iso(row["deleted_at"]),
        }
        for row in await conn.fetch(_OF_CALL, call_id)
    ]


_CALL_EXISTS = "SELECT EXISTS (SELECT 1 FROM calls WHERE call_id = $1)"


def recording_url(call_id: str) -> str:
    return f"/calls/{call_id}/recording"


async def call_recordings(run: Run[Any], files: RecordingFiles, call_id: str) -> list[dict[str, Any]] | None:
    """The call's recordings from PostgreSQL, the playable one with its ``url``; None: no such call."""

    async def query(conn: asyncpg.Connection) -> list[dict[str, Any]] | None:
        if not await conn.fetchval(_CALL_EXISTS, call_id):
            return None
        return await recordings_of(conn, call_id)

    found: list[dict[str, Any]] | None = await run(query)
    if found is None:
        return None
    chosen = playable(found, files)
    for item in found:
        item["url"] = recording_url(call_id) if item is chosen else None
    return found


async def add_recording_state(
    run: Run[Any], files: RecordingFiles, call_id: str, recordings: list[dict[str, Any]]
) -> None:
    """``deleted_at`` and ``url`` (the one ``/calls/{id}/recording`` serves) on a transcript's
    ``recordings``, from PostgreSQL."""
    by_path = {r["path"]: r for r in await call_recordings(run, files, call_id) or []}
    for item in recordings:
        known = by_path.get(item["path"], {})
        item["deleted_at"], item["url"] = known.get("deleted_at"), known.get("url")


def playable(recordings: list[dict[str, Any]], files: RecordingFiles) -> dict[str, Any] | None:
    """The recording ``GET /calls/{id}/recording`` serves: the newest finished stereo file not
    deleted, else any finished file not deleted; both must lie in the recordings folder."""
    candidates = [
        r for r in recordings if r["deleted_at"] is None and r["stopped_at"] and files.local(r["path"])
    ]
    stereo = [r for r in candidates if r["channels"] == 2]
    found = (stereo or candidates)[-1:] if candidates else []
    return found[0] if found else None


async def _mark_gone(conn: asyncpg.Connection, path: str) -> None:
    await conn.execute(_MARK_GONE, path)


class RecordingSweeper:
    """Deletes recordings older than ``retention_days`` and marks them gone (``recording_deletions``).

    Several recorders may sweep at once: deleting a missing file and marking a marked one are no-ops.
    Unfinished files (``.wav.part`` of a gateway that died mid-call) go by their age on disk.
    """

    def __init__(self, run: Run[Any], files: RecordingFiles, retention_days: float, every_s: float) -> None:
        self._run = run
        self.files = files
        self.retention = timedelta(days=retention_days)
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="recording-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(min(self.every_s, FIRST_SWEEP_AFTER_S))  # the tables exist by then
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL out of reach: the next round
                if not self._failing:
                    log.warning("recorder.recording_sweep_failed", error=type(exc).__name__)
                self._failing = True
            else:
                self._failing = False
            await asyncio.sleep(self.every_s)

    async def sweep(self, now: datetime | None = None) -> list[str]:
        """One round; returns the paths marked gone."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        # only files under the recordings folder (FreeSWITCH's own volume is not the recorder's)
        inside = f"{self.files.root}/"
        rows = await self._run(lambda conn: conn.fetch(_EXPIRED, cutoff, MAX_PER_SWEEP, inside))
        gone: list[str] = []
        for row in rows:
            path = str(row["path"])
            local = self.files.local(path)
            if local is None:
                continue
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(local.unlink)
            await self._run(partial(_mark_gone, path=path))
            RECORDINGS_DELETED.labels("deleted").inc()
            log.info("recorder.recording_deleted", call_id=row["call_id"], path=path)
            gone.append(path)
        await asyncio.to_thread(self._sweep_parts, cutoff.timestamp())
        return gone

    def _sweep_parts(self, cutoff_s: float) -> None:
        if not self.files.root.is_dir():
            return
        for part in self.files.root.rglob(f"*{PART_SUFFIX}"):
            with contextlib.suppress(OSError):
                if part.stat().st_mtime < cutoff_s:
                    part.unlink()
                    RECORDINGS_DELETED.labels("unfinished").inc()
