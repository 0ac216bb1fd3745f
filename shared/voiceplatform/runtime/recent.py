"""Turn ids remembered for a while: work that arrives late for an interrupted turn is dropped."""

from __future__ import annotations

import time


class RecentTurns:
    def __init__(self, memory_s: float) -> None:
        self.memory_s = memory_s
        self._at: dict[str, float] = {}  # turn id -> monotonic time it was added

    def add(self, turn_id: str) -> None:
        now = time.monotonic()
        horizon = now - self.memory_s
        for old in [t for t, at in self._at.items() if at < horizon]:
            del self._at[old]
        self._at[turn_id] = now

    def __contains__(self, turn_id: object) -> bool:
        return turn_id in self._at

    def __len__(self) -> int:
        return len(self._at)
