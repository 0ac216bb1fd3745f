"""Checks on what a client sends: its Origin, bounded JSON, and caller audio no faster than real time."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class OriginPolicy:
    """An Origin is allowed when it is the gateway's own (same host as the request), a localhost one
    (while ``allow_localhost``), or on the configured list. No Origin: not a browser, the token decides."""

    def __init__(self, extra: str, allow_localhost: bool) -> None:
        self.extra = {o.strip().rstrip("/").lower() for o in extra.split(",") if o.strip()}
        self.allow_localhost = allow_localhost

    def allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if origin in self.extra:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if host and parts.netloc == host.strip().lower():
            return True
        return self.allow_localhost and (parts.hostname or "") in LOCAL_HOSTS | {"::1"}


class BadMessage(ValueError):
    """A text frame that is refused; ``reason`` labels the counter, the message goes to the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in JSON text (strings skipped), without recursion."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_event(text: str, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """One client JSON event, bounded in size and nesting; raises ``BadMessage``, never anything else."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadMessage("too_large", f"text frames are limited to {max_bytes} bytes")
    if json_depth(text) > max_depth:
        raise BadMessage("too_deep", f"JSON nesting is limited to {max_depth} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadMessage("not_json", "text frames must be JSON objects") from None
    if not isinstance(value, dict):
        raise BadMessage("not_object", "text frames must be JSON objects")
    return value


class AudioRate:
    """Token bucket over caller audio bytes: real time plus ``burst_s`` ahead; the rest is refused."""

    def __init__(self, bytes_per_s: float, burst_s: float) -> None:
        self.rate = bytes_per_s
        self.capacity = bytes_per_s * burst_s
        self.tokens = self.capacity
        self.last = time.monotonic()
        self.dropped_bytes = 0

    def take(self, n: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if n > self.tokens:
            self.dropped_bytes += n
            return False
        self.tokens -= n
        return True
