"""JetStream's API left unanswered for a while, and the rule for retrying it (one place).

A stream or bucket without a leader (its node died, the replicas elect another) answers nothing
for a few seconds. On a cluster, a service starting then waits for it rather than exiting; on one
server, silence does not end by waiting, so nothing is retried there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

_T = TypeVar("_T")

UNANSWERED = (
    TimeoutError,  # nats.errors.TimeoutError too
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,  # our own node died: the client is moving to another
    nats.errors.StaleConnectionError,
)
# how long a service starting on a NATS cluster retries the JetStream API when it does not answer
CLUSTER_START_RETRY_S = 30.0


def start_retry_s(replicas: int) -> float:
    """How long creating or finding a stream or consumer of ``replicas`` replicas is retried at start."""
    return CLUSTER_START_RETRY_S if replicas > 1 else 0.0


async def retry_unanswered(op: Callable[[], Awaitable[_T]], retry_s: float) -> _T:
    """``op()``, again while the server leaves it unanswered, for up to ``retry_s`` (0: once)."""
    deadline = time.monotonic() + retry_s
    delay = 0.2
    while True:
        try:
            return await op()
        except UNANSWERED:
            if time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
