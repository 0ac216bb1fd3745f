"""JSON call logs: one file per call under ``robots/<robot>/logs/``.

File name ``YYYYMMDD_HHMMSS_<channel>_<call_id>.json`` (for example
``robots/pipeline_russian/logs/20260225_224359_web_web-0001.json``). The file is a pure function of
the call's transcript document, so writing it again after a redelivery overwrites it with the same
content under the same name (idempotent), and the write is atomic (temp file + ``os.replace``): a
reader never sees half a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

UNKNOWN_ROBOT_DIR = "_unknown"
LOGS_DIR = "logs"
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_COMPONENT = 128


def safe_component(value: str, fallback: str) -> str:
    """A value reduced to ``[A-Za-z0-9._-]`` for use inside a file name (``fallback`` when empty)."""
    cleaned = _UNSAFE_CHARS.sub("_", value)[:_MAX_COMPONENT]
    return cleaned or fallback


def is_safe_robot_name(robot: str) -> bool:
    """A robot name usable as one path component: no separators, not ``.``/``..``, not hidden."""
    return (
        bool(robot)
        and robot not in (".", "..")
        and not robot.startswith(".")
        and not any(ch in robot for ch in ("/", "\\", "\0"))
        and len(robot) <= 255
    )


def call_start_ms(doc: Mapping[str, Any]) -> int:
    """When the call started: ``started_at_ms``, else the earliest timestamp the document holds."""
    started = doc.get("started_at_ms")
    if isinstance(started, int) and started > 0:
        return started
    stamps = [
        entry["ts_ms"]
        for entry in doc.get("pipeline_log") or []
        if isinstance(entry, Mapping) and isinstance(entry.get("ts_ms"), int) and entry["ts_ms"] > 0
    ]
    ended = doc.get("ended_at_ms")
    if isinstance(ended, int) and ended > 0:
        stamps.append(ended)
    return min(stamps, default=0)


def call_log_path(logs_root_for_robot: Path, doc: Mapping[str, Any]) -> Path:
    """Path of the call's log in ``logs_root_for_robot`` (the robot's ``logs`` folder).

    The time in the name is the call start in **UTC** (``started_at_ms``; when the call.started event
    is missing, the earliest event timestamp), so names sort by start and do not depend on the
    recorder host's time zone. Channel and call id are reduced to file-name-safe characters.
    """
    started = datetime.fromtimestamp(call_start_ms(doc) / 1000, tz=UTC)
    channel = safe_component(str(doc.get("channel") or ""), "unknown")
    call_id = safe_component(str(doc.get("call_id") or ""), "unknown")
    return logs_root_for_robot / f"{started:%Y%m%d_%H%M%S}_{channel}_{call_id}.json"


def robot_logs_dir(robots_dir: Path, robot: str) -> Path:
    """``<robots_dir>/<robot>/logs``; a call without a robot (no call.started recorded) goes to
    ``<robots_dir>/_unknown/logs``.

    A name that is not one safe path component (``..``, ``a/b``, ``.hidden``) is rejected with
    ``ValueError``: it can only come from a bug or a forged event, and must not pick the folder.
    """
    if not robot:
        return robots_dir / UNKNOWN_ROBOT_DIR / LOGS_DIR
    if not is_safe_robot_name(robot):
        raise ValueError(f"unsafe robot name for a log folder: {robot!r}")
    return robots_dir / robot / LOGS_DIR


def render_call_log(doc: Mapping[str, Any]) -> bytes:
    # the json module's indenting encoder is pure Python: 20 times slower, and it runs per call end
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def write_call_log(robots_dir: Path, doc: Mapping[str, Any]) -> Path:
    """Write the call's log atomically (blocking I/O; see :func:`write_call_logs_async`)."""
    return write_call_logs(robots_dir, [doc])[0]


def write_call_logs(robots_dir: Path, docs: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write each call's log atomically; the renames are made durable once per folder.

    Each file is synced before its rename (a crash leaves the old log or the new one, never half
    of one); syncing the folder after the last rename covers every rename in it, so a batch of
    call ends costs one folder sync, not one per call (a file creation and a sync are the costly
    system calls here)."""
    paths: list[Path] = []
    folders: dict[Path, None] = {}
    for doc in docs:
        logs_dir = robot_logs_dir(robots_dir, str(doc.get("robot") or ""))
        if logs_dir not in folders:
            logs_dir.mkdir(parents=True, exist_ok=True)
            folders[logs_dir] = None
        path = call_log_path(logs_dir, doc)
        _replace_atomically(path, render_call_log(doc))
        paths.append(path)
    for folder in folders:
        _fsync_dir(folder)
    return paths


async def write_call_logs_async(robots_dir: Path, docs: Sequence[Mapping[str, Any]]) -> list[Path]:
    return await asyncio.to_thread(write_call_logs, robots_dir, docs)


def _replace_atomically(path: Path, content: bytes) -> None:
    # the temp file is hidden (leading dot) and in the same folder, so os.replace is a rename
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; logs are read by operators' tools
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make the renames in it durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
