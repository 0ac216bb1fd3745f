"""Wall-clock milliseconds, the one time base carried on the wire (ts_ms fields)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0
