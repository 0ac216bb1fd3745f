"""A read-through Redis cache of scenarios: ``scenario:{robot}:{name}`` JSON, 5 minutes.

PostgreSQL (``directory.get_scenario``) is the source of truth; the cache only saves round trips.
So a Redis that is down or holds a bad entry never fails a read: it is logged and the loader answers.
Missing scenarios are not cached (a scenario added by a sync is visible at once).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

log = structlog.get_logger("vp_recorder.scenario_cache")

SCENARIO_TTL_S = 300  # "5 минут для кэша сценариев"
_KEY_PREFIX = "scenario"
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

ScenarioLoader = Callable[[str, str], Awaitable[dict[str, Any] | None]]


def scenario_key(robot: str, name: str) -> str:
    return f"{_KEY_PREFIX}:{robot}:{name}"


def robot_scenarios_pattern(robot: str) -> str:
    """SCAN pattern of every cached scenario of ``robot`` (glob characters in the name escaped)."""
    escaped = _GLOB_SPECIAL.sub(r"\\\1", robot)
    return f"{_KEY_PREFIX}:{escaped}:*"


class ScenarioCache:
    def __init__(self, redis: aioredis.Redis, loader: ScenarioLoader, ttl_s: int = SCENARIO_TTL_S) -> None:
        self._redis = redis
        self._loader = loader
        self.ttl_s = ttl_s

    async def get(self, robot: str, name: str) -> dict[str, Any] | None:
        key = scenario_key(robot, name)
        try:
            cached = await self._redis.get(key)
        except redis.exceptions.RedisError as exc:
            log.warning("scenario_cache.read_failed", key=key, error=type(exc).__name__)
            cached = None
        if cached is not None:
            try:
                value: dict[str, Any] = json.loads(cached)
                return value
            except ValueError:
                log.warning("scenario_cache.bad_entry", key=key)
        scenario = await self._loader(robot, name)
        if scenario is not None:
            try:
                await self._redis.set(key, json.dumps(scenario, ensure_ascii=False), ex=self.ttl_s)
            except redis.exceptions.RedisError as exc:
                log.warning("scenario_cache.write_failed", key=key, error=type(exc).__name__)
        return scenario

    async def invalidate(self, robot: str) -> int:
        """Drop every cached scenario of ``robot``; return how many entries were dropped."""
        keys = [key async for key in self._redis.scan_iter(match=robot_scenarios_pattern(robot), count=500)]
        if not keys:
            return 0
        return int(await self._redis.delete(*keys))
