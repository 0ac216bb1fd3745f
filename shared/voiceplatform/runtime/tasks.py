"""Tasks have owners: spawned through a registry, cancelled with a bounded wait, never orphaned."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("voiceplatform.tasks")


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float = 2.0) -> None:
    """Cancel a task and wait for it to finish its ``finally`` blocks, at most ``timeout`` seconds."""
    if task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("task.cancel_timeout", task=task.get_name(), timeout_s=timeout)


class TaskRegistry:
    """Tasks grouped by key (a call id or a turn id) so they can be cancelled together."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], str] = {}

    def spawn(self, coro: Coroutine[Any, Any, Any], key: str = "", name: str = "") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name or key or None)
        self._tasks[task] = key
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.failed", task=task.get_name(), error=repr(task.exception()))

    def keys(self) -> set[str]:
        return set(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def all_tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks)

    def tasks_for(self, key: str) -> list[asyncio.Task[Any]]:
        return [t for t, k in self._tasks.items() if k == key]

    async def cancel(self, key: str, timeout: float = 2.0) -> int:
        tasks = self.tasks_for(key)
        await asyncio.gather(*(cancel_and_wait(t, timeout) for t in tasks))
        return len(tasks)

    async def wait_all(self, timeout: float) -> bool:
        """Wait for every task to end on its own; True when all did within ``timeout``."""
        pending = set(self._tasks)
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def cancel_all(self, timeout: float = 2.0) -> None:
        await asyncio.gather(*(cancel_and_wait(t, timeout) for t in list(self._tasks)))
