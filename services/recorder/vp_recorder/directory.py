"""The directory operators use, in PostgreSQL: callers (``users``) and robot scenarios (``scenarios``).

- :func:`record_caller` counts each call of a phone number once: the call id is remembered in
  ``user_calls``, so a redelivered event (or a second recorder) changes nothing.
- :func:`sync_scenarios` keeps one ``scenarios`` row per robot prompt, read from the robot folders
  with the platform's own robot loader; a row is written only when its content hash changed.
- :func:`get_scenario` returns one row as a JSON-ready dict (what ``ScenarioCache`` keeps in Redis).

Scenario names are the robot's prompt ids as the router uses them (``router.default_prompt`` for
``prompt.txt``, the ``router.prompts`` keys for ``prompts/*.txt``), the same ids ``prompt.switched``
and the ``call.ended`` summary carry, so a scenario is found by the prompt a call was on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from voiceplatform.config import RobotConfig, RobotConfigError, RobotRegistry
from voiceplatform.config.tracks import manifest_path

log = structlog.get_logger("vp_recorder.directory")

_UPSERT_SCENARIO = """
INSERT INTO scenarios (robot, name, config, content_sha256, updated_at)
VALUES ($1, $2, $3::jsonb, $4, now())
ON CONFLICT (robot, name) DO UPDATE SET
    config = EXCLUDED.config, content_sha256 = EXCLUDED.content_sha256, updated_at = now()
WHERE scenarios.content_sha256 IS DISTINCT FROM EXCLUDED.content_sha256
RETURNING id
"""

_GET_SCENARIO = """
SELECT robot, name, config::text AS config, content_sha256, updated_at
FROM scenarios WHERE robot = $1 AND name = $2
"""


async def record_caller(conn: asyncpg.Connection, phone: str, call_id: str, at: datetime) -> None:
    """Count call ``call_id`` for caller ``phone`` (once, however often it is recorded).

    Calls without a caller id (browser calls, hidden numbers) have no user and are not recorded.
    """
    if not phone:
        return
    await conn.execute("SELECT record_caller($1, $2, $3)", call_id, phone, at)  # migration 007


def canonical_json(value: Any) -> str:
    """One text per value (sorted keys, no spaces): what the content hash is taken over."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def robot_scenarios(robot: RobotConfig) -> dict[str, dict[str, Any]]:
    """Scenario name → config ``{"prompt": text, "dialog": dialog.json content or None}``, plus
    ``"tracks"`` (its ``tracks/manifest.json``) for an llm_script robot."""
    dialog_path = robot.dialog_path
    dialog = json.loads(dialog_path.read_text(encoding="utf-8")) if dialog_path.is_file() else None
    extra: dict[str, Any] = {}
    manifest = manifest_path(robot.path)
    if robot.settings.mode == "llm_script" and manifest.is_file():
        extra["tracks"] = json.loads(manifest.read_text(encoding="utf-8"))
    return {
        prompt_id: {"prompt": text, "dialog": dialog, **extra} for prompt_id, text in robot.prompts.items()
    }


def _load_all(robots_dir: Path) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """Every valid robot's scenarios; a robot that does not load is logged and left out."""
    registry = RobotRegistry(robots_dir)
    loaded = []
    for folder_name in registry.names():
        try:
            robot = registry.get(folder_name)
            loaded.append((robot.name, robot_scenarios(robot)))
        except RobotConfigError as exc:
            log.warning("directory.robot_skipped", robot=folder_name, problems=exc.problems)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("directory.robot_skipped", robot=folder_name, problems=[str(exc)])
    return loaded


async def sync_scenarios(conn: asyncpg.Connection, robots_dir: Path) -> int:
    """Bring ``scenarios`` in line with the robot folders; return how many rows were written.

    Rows of prompts that no longer exist are kept: past calls still name them.
    """
    changed = 0
    async with conn.transaction():
        for robot_name, scenarios in _load_all(robots_dir):
            for name, config in scenarios.items():
                text = canonical_json(config)
                sha256 = hashlib.sha256(text.encode()).hexdigest()
                if await conn.fetchrow(_UPSERT_SCENARIO, robot_name, name, text, sha256) is not None:
                    changed += 1
    if changed:
        log.info("directory.scenarios_synced", changed=changed)
    return changed


async def get_scenario(conn: asyncpg.Connection, robot: str, name: str) -> dict[str, Any] | None:
    """One scenario as a JSON-ready dict (``updated_at`` in ISO 8601), or None."""
    row = await conn.fetchrow(_GET_SCENARIO, robot, name)
    if row is None:
        return None
    return {
        "robot": row["robot"],
        "name": row["name"],
        "config": json.loads(row["config"]),
        "content_sha256": row["content_sha256"],
        "updated_at": row["updated_at"].isoformat(),
    }
