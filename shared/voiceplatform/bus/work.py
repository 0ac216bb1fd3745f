"""Per-turn work that survives its worker: a JetStream pull consumer shared by a role's instances.

A turn request (the router's ``asr.final``/``call.no_input``, an ``llm.request``, each TTS
sentence) is a stream message; every instance of the role pulls from one durable consumer and
runs what it took as a task. While the task runs, the event loop tells the server "still working"
(an in-progress ack every third of the ack wait); the message is acked when the work ends. An
instance that dies stops acking, one that hangs (SIGSTOP, a blocked loop) too, and stops pulling
as well: after ``ack_wait_s`` the server hands the message to another instance. After
``max_deliver`` deliveries the server gives up and announces it (an advisory), and one instance of
the role reports it (``on_exhausted``: a ``stage.error``). Work older than ``stale_s`` is dropped.

A worker whose event loop stalled past the ack wait (frozen, then resumed) has lost its lease:
the server may have handed the work on. ``still_ours()`` says so to the code that publishes the
work's output, which stops with ``WorkGivenAway`` instead of speaking over the retry; the stale
delivery is not acked. What a stage publishes is also idempotent by turn id (``Nats-Msg-Id`` on
stream subjects, the gateway's playout by chunk number) for the race that remains.

On the in-memory bus (unit tests) the same interface is a plain queue-group subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy
from prometheus_client import Counter

from voiceplatform import load, subjects
from voiceplatform.bus.base import Bus, Envelope, Subscription
from voiceplatform.bus.jetstream import StreamSpec
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.streams import stream_for
from voiceplatform.bus.unanswered import retry_unanswered, start_retry_s
from voiceplatform.wire import Message, WireError, decode

if TYPE_CHECKING:
    from voiceplatform.config.settings import ServiceSettings

log = structlog.get_logger("voiceplatform.work")

WORK = Counter(
    "vp_work_messages_total",
    "Per-turn work messages by consumer and outcome (done, failed, returned, stale, malformed, "
    "exhausted, skipped: not work, acked at once); 'retry' counts deliveries after the first",
    ["consumer", "outcome"],
)

# how long one pull request waits at the server: a frozen instance holds at most one message
# (redelivered after the ack wait), and stop() returns within this
PULL_EXPIRES_S = 1.0
# a consumer no instance pulls from for this long is removed by the server (abandoned roles, tests)
INACTIVE_S = 3600.0

WorkHandler = Callable[[Envelope, int], Awaitable[None]]
"""Runs one piece of work to its end: (the message, its delivery attempt, 1 for the first)."""
ExhaustedHandler = Callable[[Envelope], Awaitable[None]]


class WorkGivenAway(asyncio.CancelledError):
    """The work's lease ran out (this process stalled past the ack wait): another instance may run
    it now, so this one stops without publishing more. A cancellation: no handler catches it as an
    error, and the stage does not report an interruption."""


@dataclass(slots=True)
class _Lease:
    ack_wait_s: float
    renewed: float = field(default_factory=time.monotonic)  # taken, or last told "in progress"

    def lost(self) -> bool:
        return time.monotonic() - self.renewed > self.ack_wait_s


_LEASE: ContextVar[_Lease | None] = ContextVar("vp_work_lease", default=None)


def still_ours() -> bool:
    """Whether the work the current task runs for is still this instance's (always, outside work)."""
    lease = _LEASE.get()
    return lease is None or not lease.lost()


def check_still_ours() -> None:
    """Call before publishing a piece of the work's output: raises ``WorkGivenAway`` if it is not."""
    if not still_ours():
        raise WorkGivenAway()


@dataclass(frozen=True, slots=True)
class WorkSpec:
    stream: StreamSpec  # created from this when no stream holds the subject yet
    consumer: str  # durable name, shared by every instance of the role
    filter_subject: str
    ack_wait_s: float = 2.0
    max_deliver: int = 3
    stale_s: float = 15.0
    max_in_flight: int = 256
    stage: str = ""  # the role whose load this work is (``voiceplatform.load``); default: consumer
    # the message types that are work (empty: every one); the others on the subject (a lifecycle
    # subject carries usage, playback and turn accounts too) are acked at once, without a task
    takes: tuple[type[Message], ...] = ()

    @classmethod
    def of(
        cls,
        stream: StreamSpec,
        consumer: str,
        filter_subject: str,
        settings: ServiceSettings,
        stage: str = "",
        takes: tuple[type[Message], ...] = (),
    ) -> WorkSpec:
        """A role's work with the delivery settings every service reads (``VP_WORK_*``)."""
        return cls(
            stream,
            consumer,
            filter_subject,
            ack_wait_s=settings.work_ack_wait_s,
            max_deliver=settings.work_max_deliver,
            stale_s=settings.work_stale_s,
            stage=stage,
            takes=takes,
        )

    def is_work(self, message: Message) -> bool:
        return not self.takes or isinstance(message, self.takes)

    @property
    def role(self) -> str:
        return self.stage or self.consumer


class WorkSource(Protocol):
    @property
    def in_flight(self) -> int: ...

    async def stop(self, timeout: float) -> None:
        """Stop taking work; wait up to ``timeout`` for what is in hand, hand the rest back."""
        ...


async def take_work(
    bus: Bus, spec: WorkSpec, handler: WorkHandler, on_exhausted: ExhaustedHandler | None = None
) -> WorkSource:
    """Start taking ``spec``'s work: JetStream on NATS, a queue group on the in-memory bus."""
    source: _JetStreamWork | _QueueGroupWork
    if isinstance(bus, NatsBus):
        source = _JetStreamWork(bus, spec, handler, on_exhausted)
    else:
        source = _QueueGroupWork(bus, spec, handler)
    await source.start()
    return source


class _Tasks:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: set[asyncio.Task[None]] = set()
        self.free = asyncio.Event()
        self.free.set()

    def spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self.running.add(task)
        if len(self.running) >= self.limit:
            self.free.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if len(self.running) < self.limit:
            self.free.set()

    async def finish(self, timeout: float) -> None:
        if self.running:
            await asyncio.wait(set(self.running), timeout=max(timeout, 0.0))
        left = set(self.running)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=2.0)


class _JetStreamWork:
    def __init__(
        self, bus: NatsBus, spec: WorkSpec, handler: WorkHandler, on_exhausted: ExhaustedHandler | None
    ) -> None:
        self._bus = bus
        self._js: JetStreamContext = bus.jetstream()
        self.spec = spec
        self._handler = handler
        self._on_exhausted = on_exhausted
        self._tasks = _Tasks(spec.max_in_flight)
        self._stream = spec.stream.name
        self._psub: JetStreamContext.PullSubscription | None = None
        self._advisories: NatsSubscription | None = None
        self._loop: asyncio.Task[None] | None = None
        self._depth: asyncio.Task[None] | None = None
        self._skipped = WORK.labels(spec.consumer, "skipped")

    @property
    def in_flight(self) -> int:
        return len(self._tasks.running)

    async def start(self) -> None:
        spec = self.spec
        # on a cluster still electing leaders (a node just died or came back) JetStream's API may
        # not answer for a while: a worker starting then waits for it rather than exiting
        retry_s = start_retry_s(self._bus.js_replicas)
        self._stream = await stream_for(self._js, replace(spec.stream, replicas=self._bus.js_replicas))
        config = ConsumerConfig(
            durable_name=spec.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            # a work-queue stream holds only unfinished work; on a stream of events, from now on
            deliver_policy=DeliverPolicy.ALL
            if spec.stream.retention is RetentionPolicy.WORK_QUEUE
            else DeliverPolicy.NEW,
            ack_wait=spec.ack_wait_s,
            max_deliver=spec.max_deliver,
            max_ack_pending=-1,
            filter_subject=spec.filter_subject,
            inactive_threshold=INACTIVE_S,
        )
        try:
            await retry_unanswered(lambda: self._js.add_consumer(self._stream, config), retry_s)
        except nats.js.errors.APIError as exc:
            # another instance's settings differ: use its consumer as it is, and say so
            log.warning("work.consumer_kept", consumer=spec.consumer, detail=str(exc)[:200])
        self._psub = await self._js.pull_subscribe_bind(durable=spec.consumer, stream=self._stream)
        if self._on_exhausted is not None:
            self._advisories = await self._bus.client.subscribe(
                subjects.max_deliveries_advisory(self._stream, spec.consumer),
                queue=spec.consumer,
                cb=self._exhausted,
            )
        for outcome in ("done", "retry", "failed", "returned", "given_away", "stale", "exhausted"):
            WORK.labels(spec.consumer, outcome)
        self._loop = asyncio.get_running_loop().create_task(self._pull(), name=f"work-{spec.consumer}")
        self._depth = asyncio.get_running_loop().create_task(
            load.watch_queue(spec.role, spec.consumer, self._consumer_backlog), name=f"depth-{spec.consumer}"
        )
        log.info("work.started", consumer=spec.consumer, stream=self._stream, ack_wait_s=spec.ack_wait_s)

    async def _pull(self) -> None:
        assert self._psub is not None
        failures = 0
        while True:
            await self._tasks.free.wait()
            try:
                msgs = await self._psub.fetch(1, timeout=PULL_EXPIRES_S)
            except TimeoutError:
                failures = 0
                continue  # nothing to do within the pull's expiry
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected, reconnecting: try again, backing off
                if self._bus.client.is_closed:
                    log.warning("work.connection_closed", consumer=self.spec.consumer)
                    return
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("work.pull_failed", consumer=self.spec.consumer, error=type(exc).__name__)
                await asyncio.sleep(min(0.1 * failures, 1.0))
                continue
            failures = 0
            for msg in msgs:
                await self._take(msg)

    async def _consumer_backlog(self) -> tuple[int, int]:
        assert self._psub is not None
        info = await self._psub.consumer_info()
        return info.num_pending or 0, info.num_ack_pending or 0

    async def _take(self, msg: Msg) -> None:
        spec = self.spec
        received = time.monotonic()
        try:
            message = decode(msg.data)
        except WireError as exc:
            WORK.labels(spec.consumer, "malformed").inc()
            log.warning("work.malformed", consumer=spec.consumer, subject=msg.subject, reason=exc.reason)
            await _settle(msg.term)
            return
        if not spec.is_work(message):
            self._skipped.inc()
            await _settle(msg.ack)
            return
        meta = msg.metadata
        attempt = int(meta.num_delivered)
        age_s = time.time() - meta.timestamp.timestamp()
        if age_s > spec.stale_s:
            WORK.labels(spec.consumer, "stale").inc()
            log.warning("work.stale", consumer=spec.consumer, subject=msg.subject, age_s=round(age_s, 1))
            await _settle(msg.term)
            return
        if attempt > 1:
            WORK.labels(spec.consumer, "retry").inc()
            log.warning(
                "work.redelivered",
                consumer=spec.consumer,
                call_id=message.call_id,
                turn_id=getattr(message, "turn_id", ""),
                attempt=attempt,
            )
        env = Envelope(msg.subject, message)
        lease = _Lease(spec.ack_wait_s, received)
        name = f"work-{spec.consumer}-{meta.sequence.stream}"
        self._tasks.spawn(self._work(msg, env, attempt, lease), name=name)

    async def _work(self, msg: Msg, env: Envelope, attempt: int, lease: _Lease) -> None:
        consumer = self.spec.consumer
        _LEASE.set(lease)  # this task's context, inherited by the tasks the handler spawns
        ticker = asyncio.get_running_loop().create_task(self._progress(msg, lease))
        try:
            await self._handler(env, attempt)
            if lease.lost():
                raise WorkGivenAway()
        except WorkGivenAway:
            # stalled past the ack wait: the server hands (or handed) it to another instance
            WORK.labels(consumer, "given_away").inc()
            log.warning("work.given_away", consumer=consumer, call_id=env.message.call_id)
            return
        except asyncio.CancelledError:
            # stop() gave up waiting: another instance takes it now, not after the ack wait
            WORK.labels(consumer, "returned").inc()
            await _settle(msg.nak)
            raise
        except Exception:
            WORK.labels(consumer, "failed").inc()
            log.exception("work.failed", consumer=consumer, subject=env.subject, call_id=env.message.call_id)
            await _settle(msg.term)  # a bug fails the same way everywhere: no retry
            return
        finally:
            ticker.cancel()
        WORK.labels(consumer, "done").inc()
        await _settle(msg.ack)

    async def _progress(self, msg: Msg, lease: _Lease) -> None:
        interval = self.spec.ack_wait_s / 3
        while True:
            await asyncio.sleep(interval)
            if lease.lost():
                return  # too late: the server no longer counts this delivery as ours
            now = time.monotonic()
            await _settle(msg.in_progress)
            lease.renewed = now

    async def _exhausted(self, raw: Msg) -> None:
        assert self._on_exhausted is not None
        try:
            seq = int(json.loads(raw.data)["stream_seq"])
            stored = await self._js.get_msg(self._stream, seq)
            message = decode(stored.data or b"")
        except Exception as exc:  # gone (age), malformed: nothing to report on
            log.warning("work.exhausted_unreadable", consumer=self.spec.consumer, error=type(exc).__name__)
            return
        WORK.labels(self.spec.consumer, "exhausted").inc()
        log.error(
            "work.exhausted",
            consumer=self.spec.consumer,
            call_id=message.call_id,
            turn_id=getattr(message, "turn_id", ""),
            deliveries=self.spec.max_deliver,
        )
        await self._on_exhausted(Envelope(stored.subject or "", message))

    async def stop(self, timeout: float) -> None:
        for task in (self._loop, self._depth):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._loop = self._depth = None
        for sub in (self._advisories, self._psub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._advisories = self._psub = None
        await self._tasks.finish(timeout)


async def _settle(action: Callable[[], Awaitable[None]]) -> None:
    """Ack/nak/term/progress: lost ones only cost a redelivery, so failures are not raised."""
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
        await action()


class _QueueGroupWork:
    """The in-memory bus has no streams: one queue-group member takes each message, once."""

    def __init__(self, bus: Bus, spec: WorkSpec, handler: WorkHandler) -> None:
        self._bus = bus
        self.spec = spec
        self._handler = handler
        self._tasks = _Tasks(spec.max_in_flight)
        self._sub: Subscription | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks.running)

    async def start(self) -> None:
        self._sub = await self._bus.subscribe(
            self.spec.filter_subject, self._on_message, queue=self.spec.consumer
        )

    async def _on_message(self, env: Envelope) -> None:
        if self.spec.is_work(env.message):
            self._tasks.spawn(self._run(env), name=f"work-{self.spec.consumer}")

    async def _run(self, env: Envelope) -> None:
        try:
            await self._handler(env, 1)
        except Exception:
            log.exception("work.failed", consumer=self.spec.consumer, subject=env.subject)

    async def stop(self, timeout: float) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        await self._tasks.finish(timeout)
