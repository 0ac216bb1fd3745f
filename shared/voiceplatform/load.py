"""How loaded each stage is, for an autoscaler: the same metric names for every stage, in one place.

Each stage says how much work it has in the terms that fit it:

- streaming stages and gateways (vad, asr, realtime, gateway-web, gateway-fs) own calls:
  ``vp_stage_calls_owned`` out of ``vp_stage_capacity`` (``VP_MAX_CALLS``), and their ratio
  ``vp_stage_load_ratio`` (per pod: an autoscaler averages it over the pods);
- per-turn work stages (prompt-router, llm, tts) share a JetStream durable consumer:
  ``vp_stage_queue_depth{state}`` is that consumer's ``num_pending`` (not yet taken) and
  ``num_ack_pending`` (taken, not finished). It is the role's backlog, not the pod's: every pod of
  the role reports the same figures, so a query takes the ``max`` over pods, then divides by pods;
- every stage: ``vp_stage_turn_seconds``, from a turn's input reaching the stage to the stage's first
  output for it (gateway: caller's speech end → first robot frame; asr: speech end → final; router:
  final → llm.request; llm: request → first sentence; tts: sentence → first audio; vad: a pause →
  the end-of-turn verdict; realtime calls: the gateway's figure).

The same figures are on ``/health`` under ``load`` (``snapshot``), and on the bus: every process's
presence (``worker.heartbeat`` each second) carries them as ``StageLoad`` (``stage_loads``), with the
turn time's p50/p95 over the last minute; ``vp load`` prints them for the whole platform. How the
HorizontalPodAutoscalers use them: docs/deploy-kubernetes.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Gauge, Histogram

from voiceplatform.wire import StageLoad

log = structlog.get_logger("voiceplatform.load")

# how often a work stage asks the server for its consumer's backlog (one request per consumer and
# pod; an autoscaler scrapes every 15-30 s)
QUEUE_POLL_S = 5.0

# the turn times a presence summarizes: the last minute's, at most this many per stage
TURN_WINDOW_S = 60.0
TURN_WINDOW_MAX = 2048

TURN_BUCKETS_S = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

CALLS_OWNED = Gauge("vp_stage_calls_owned", "Calls this process owns now", ["stage"])
CAPACITY = Gauge("vp_stage_capacity", "Calls this process accepts at most (VP_MAX_CALLS)", ["stage"])
LOAD_RATIO = Gauge("vp_stage_load_ratio", "Calls owned / capacity of this process (0..1)", ["stage"])
QUEUE_DEPTH = Gauge(
    "vp_stage_queue_depth",
    "Messages of the stage's shared durable consumer: pending (not yet taken by any instance) and "
    "ack_pending (taken, not finished); the same for every instance of the stage",
    ["stage", "consumer", "state"],
)
TURN_SECONDS = Histogram(
    "vp_stage_turn_seconds",
    "A turn's input reaching the stage → the stage's first output for it, in seconds",
    ["stage"],
    buckets=TURN_BUCKETS_S,
)


@dataclass(slots=True)
class _Calls:
    count: Callable[[], int]
    capacity: int

    def ratio(self) -> float:
        return self.count() / self.capacity if self.capacity > 0 else 0.0


@dataclass(slots=True)
class _Queue:
    pending: int
    ack_pending: int
    at: float  # time.time() of the reading


_calls: dict[str, _Calls] = {}
_queues: dict[tuple[str, str], _Queue] = {}
_recent_turns: dict[str, deque[tuple[float, float]]] = {}  # stage -> (monotonic time, seconds)


def track_calls(stage: str, count: Callable[[], int], capacity: int) -> None:
    """Publish ``count()`` (read at each scrape) as the calls ``stage`` owns in this process."""
    calls = _Calls(count, capacity)
    _calls[stage] = calls
    CALLS_OWNED.labels(stage).set_function(lambda: float(calls.count()))
    CAPACITY.labels(stage).set(capacity)
    LOAD_RATIO.labels(stage).set_function(calls.ratio)
    TURN_SECONDS.labels(stage)  # the series exists from the start


def record_queue(stage: str, consumer: str, pending: int, ack_pending: int) -> None:
    """A reading of a work stage's consumer (``bus.work`` polls it every ``QUEUE_POLL_S``)."""
    _queues[(stage, consumer)] = _Queue(pending, ack_pending, time.time())
    QUEUE_DEPTH.labels(stage, consumer, "pending").set(pending)
    QUEUE_DEPTH.labels(stage, consumer, "ack_pending").set(ack_pending)
    TURN_SECONDS.labels(stage)


async def watch_queue(stage: str, consumer: str, backlog: Callable[[], Awaitable[tuple[int, int]]]) -> None:
    """Read ``backlog()`` (pending, ack_pending) every ``QUEUE_POLL_S`` until cancelled; a failed
    reading is skipped (the last one stays, its age shown on /health)."""
    while True:
        try:
            pending, ack_pending = await backlog()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # disconnected, reconnecting: the next reading comes soon
            log.debug("load.queue_unknown", consumer=consumer, error=type(exc).__name__)
        else:
            record_queue(stage, consumer, pending, ack_pending)
        await asyncio.sleep(QUEUE_POLL_S)


def gateway_of(channel: str) -> str:
    """The gateway stage a call's channel comes through (``web``, ``phone``)."""
    return "gateway-fs" if channel == "phone" else f"gateway-{channel}"


def observe_turn(stage: str, seconds: float) -> None:
    seconds = max(seconds, 0.0)
    TURN_SECONDS.labels(stage).observe(seconds)
    recent = _recent_turns.get(stage)
    if recent is None:
        recent = _recent_turns[stage] = deque(maxlen=TURN_WINDOW_MAX)
    recent.append((time.monotonic(), seconds))


def stage_loads(now: float | None = None) -> list[StageLoad]:
    """This process's load per stage, as its presence carries it (``StageLoad``)."""
    now = time.monotonic() if now is None else now
    stages = dict.fromkeys([*_calls, *(stage for stage, _ in _queues), *_recent_turns])
    out: list[StageLoad] = []
    for stage in stages:
        load = StageLoad(stage=stage)
        calls = _calls.get(stage)
        if calls is not None:
            load.calls_owned, load.capacity = calls.count(), calls.capacity
        queues = [q for (s, _), q in _queues.items() if s == stage]
        if queues:
            load.queue_pending = sum(q.pending for q in queues)
            load.queue_ack_pending = sum(q.ack_pending for q in queues)
        seen = list(_recent_turns.get(stage, ()))  # one C call: a copy no other thread tears
        recent = sorted(took for at, took in seen if now - at <= TURN_WINDOW_S)
        if recent:
            load.turns = len(recent)
            load.turn_p50_ms = round(_nearest_rank(recent, 0.50) * 1000)
            load.turn_p95_ms = round(_nearest_rank(recent, 0.95) * 1000)
        out.append(load)
    return out


def _nearest_rank(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def snapshot() -> dict[str, object]:
    """The load figures of this process, for /health (empty for a stage that reports none)."""
    out: dict[str, object] = {}
    for stage, calls in _calls.items():
        owned = calls.count()
        out[stage] = {
            "calls_owned": owned,
            "capacity": calls.capacity,
            "load_ratio": round(calls.ratio(), 3),
        }
    for (stage, consumer), queue in _queues.items():
        entry = out.setdefault(stage, {})
        assert isinstance(entry, dict)
        entry.setdefault("queues", {})[consumer] = {
            "pending": queue.pending,
            "ack_pending": queue.ack_pending,
            "age_s": round(time.time() - queue.at, 1),
        }
    return out
