"""Test helpers shared by the llm and router tests: collect bus messages and wait for them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from voiceplatform.bus import Bus, Envelope
from voiceplatform.wire import Message

M = TypeVar("M", bound=Message)


class Collector:
    """Everything published on ``pattern``, with arrival times (monotonic)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, Message]] = []
        self._changed = asyncio.Event()

    @classmethod
    async def on(cls, bus: Bus, pattern: str) -> Collector:
        collector = cls()
        await bus.subscribe(pattern, collector._handle)
        return collector

    async def _handle(self, env: Envelope) -> None:
        self.items.append((time.monotonic(), env.subject, env.message))
        self._changed.set()

    def of(self, kind: type[M], **where: Any) -> list[M]:
        return [
            m
            for _, _, m in self.items
            if isinstance(m, kind) and all(getattr(m, k) == v for k, v in where.items())
        ]

    def first_time(self, kind: type[Message], **where: Any) -> float:
        for at, _, m in self.items:
            if isinstance(m, kind) and all(getattr(m, k) == v for k, v in where.items()):
                return at
        raise LookupError(kind.__name__)

    async def wait(self, kind: type[M], count: int = 1, timeout_s: float = 5.0, **where: Any) -> list[M]:
        await self.wait_until(lambda: len(self.of(kind, **where)) >= count, timeout_s, kind.__name__)
        return self.of(kind, **where)

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what or condition}; got {self.summary()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def summary(self) -> list[str]:
        return [m.type_name for _, _, m in self.items]


async def settle(rounds: int = 20) -> None:
    """Let in-memory deliveries and spawned tasks run."""
    for _ in range(rounds):
        await asyncio.sleep(0)
