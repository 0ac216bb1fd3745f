"""JetStream for consumers that must not lose events: a stream over core subjects, durable pull
consumers with explicit acks, and read-back of one call's events.

Publishers keep using core NATS publish (no JetStream ack on the call path): the stream captures
those subjects on the server, so a consumer that is down, slow or restarting misses nothing. On a
NATS cluster (``VP_JS_REPLICAS`` > 1) ``NatsBus.publish`` sends them with an ack instead, because a
stream electing a new leader drops core publishes (docs/deploy-cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from voiceplatform.bus.unanswered import retry_unanswered, start_retry_s

# read-back consumers are ephemeral; the server forgets one this long after its last use
_READ_BACK_INACTIVE_S = 30.0


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    replicas: int = 1  # VP_JS_REPLICAS: 3 on a NATS cluster (docs/deploy-cluster.md)

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            retention=self.retention,
            num_replicas=self.replicas,
        )


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> str:
    """Create the stream, or bring an existing one to ``spec`` (several instances may race here).

    On a cluster (``spec.replicas`` > 1) this is retried while JetStream does not answer
    (``unanswered.start_retry_s``): a service starting while leaders are elected waits for them.

    Returns the stream's name: ``spec.name``, or the name of a stream that already holds ``spec``'s
    subjects (a worker created it first under the default name; streams may not overlap), which is
    then brought to ``spec`` under its own name instead of failing on the overlap.

    Subjects are only ever added: a stream keeps those it has that ``spec`` lacks, so an instance
    of an older version starting during a rolling upgrade does not stop the stream capturing a
    subject the newer version publishes on.
    """
    return await retry_unanswered(lambda: _ensure_stream(js, spec), start_retry_s(spec.replicas))


async def _ensure_stream(js: JetStreamContext, spec: StreamSpec) -> str:
    config = spec.config()
    try:
        info = await js.stream_info(spec.name)
        config.subjects = _with_subjects_kept(config.subjects, info.config.subjects)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
            return spec.name
        except nats.js.errors.BadRequestError:
            # created by another instance in between, or another stream holds these subjects
            holder = await _holder(js, spec)
            if holder is not None and holder != spec.name:
                config.name = holder
                held = await js.stream_info(holder)
                config.subjects = _with_subjects_kept(config.subjects, held.config.subjects)
                await js.update_stream(config)
                return holder
    await js.update_stream(config)
    return spec.name


def _with_subjects_kept(wanted: list[str] | None, existing: list[str] | None) -> list[str]:
    wanted = list(wanted or [])
    return wanted + [s for s in existing or [] if s not in wanted]


async def _holder(js: JetStreamContext, spec: StreamSpec) -> str | None:
    try:
        return str(await js.find_stream_name_by_subject(spec.subjects[0]))
    except nats.js.errors.NotFoundError:
        return None


def takes_several_filters(js: JetStreamContext) -> bool:
    """A consumer of the connected server may have several filter subjects (NATS 2.10 and later)."""
    version = js._nc.connected_server_version
    return (version.major, version.minor) >= (2, 10)


def stream_sequence(msg: Msg) -> int:
    # read off the ack subject ($JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>
    # .<ts>.<pending>): the client's full metadata (a datetime, dataclasses) cost more CPU than
    # the rest of recording a message; other forms of the subject go through the client
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


# a fetch that brought fewer messages than this lingers for more (DurableConsumer.fetch)
LINGER_BELOW = 32


class DurableConsumer:
    """A durable pull consumer: fetch a batch, ack each message after it is handled.

    Several processes using the same durable name share its messages (each gets different ones),
    which is how the recorder scales out. ``max_deliver=-1``: a message is redelivered until acked
    or terminated; bad ones are terminated by the caller after parking them.

    ``filter_subjects``: only the stream's messages on these subjects are delivered (None: all).
    Several filters need NATS 2.10; an older server delivers everything (the caller still checks
    what it gets). A durable made before with other filters is brought to these when the server
    allows it, and otherwise read as it is: never deleted, which would lose its place.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str] | None = None,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 20_000,
        start_retry_s: float = 0.0,
    ) -> None:
        self._js = js
        self.start_retry_s = start_retry_s  # start() retries an unanswered API this long (a cluster)
        self.stream = stream
        self.durable = durable
        self.filter_subjects = tuple(filter_subjects) if filter_subjects else None
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.filtered: tuple[str, ...] | None = None  # the filters in force once started
        self._psub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        filters = self.filter_subjects
        if filters is not None and len(filters) > 1 and not takes_several_filters(self._js):
            filters = None
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            filter_subject=filters[0] if filters is not None and len(filters) == 1 else None,
            filter_subjects=list(filters) if filters is not None and len(filters) > 1 else None,
        )
        retry_s = self.start_retry_s
        try:
            await retry_unanswered(lambda: self._js.add_consumer(self.stream, config), retry_s)
            self.filtered = filters
        except nats.js.errors.BadRequestError:
            # it exists with other filters and this server will not change them: read it as it is
            info = await retry_unanswered(lambda: self._js.consumer_info(self.stream, self.durable), retry_s)
            kept = info.config.filter_subjects or (
                [info.config.filter_subject] if info.config.filter_subject else []
            )
            self.filtered = tuple(kept) or None
        self._psub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    @property
    def started(self) -> bool:
        return self._psub is not None

    async def fetch(self, batch: int, timeout_s: float, linger_s: float = 0.0) -> list[Msg]:
        """Up to ``batch`` messages; an empty list when none came within ``timeout_s``.

        The client waits for the first (it knows the server's status replies); the rest of what is
        ready comes with one no-wait pull request and is taken from the subscription's queue as it
        arrives: nats-py's own fetch spends a task and a timer per message, most of a recorder's
        CPU per event.

        ``linger_s`` shares a batch's cost among more messages when they trickle in: when nothing
        was waiting behind the first (its delivery says how many are pending), the rest is asked
        for ``linger_s`` later; when fewer than ``LINGER_BELOW`` were waiting, more are asked for
        after ``linger_s``. A backlog is taken at once, and a trickle costs two pull requests a
        batch, not three (an immediate one would mostly come back empty)."""
        psub = self._psub
        if psub is None:
            raise RuntimeError("consumer not started")
        try:
            msgs = await psub.fetch(1, timeout=timeout_s)
        except TimeoutError:
            # nats.errors.TimeoutError, and a bare asyncio timeout from the client's own wait
            return []
        trickle = linger_s > 0 and msgs[-1].metadata.num_pending == 0
        if trickle:
            await asyncio.sleep(linger_s)
        if len(msgs) < batch:
            msgs += await _take_ready(psub, batch - len(msgs), timeout_s)
        if linger_s > 0 and not trickle and len(msgs) < min(batch, LINGER_BELOW):
            await asyncio.sleep(linger_s)
            msgs += await _take_ready(psub, batch - len(msgs), timeout_s)
        return msgs

    async def pending(self) -> int:
        """Messages not yet delivered plus delivered but not acked (the consumer's backlog)."""
        info = await self._js.consumer_info(self.stream, self.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def stop(self) -> None:
        psub, self._psub = self._psub, None
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()


async def _take_ready(psub: JetStreamContext.PullSubscription, batch: int, timeout_s: float) -> list[Msg]:
    """Up to ``batch`` messages the server has ready now (a no-wait pull request)."""
    request = json.dumps({"batch": batch, "no_wait": True}).encode()
    await psub._nc.publish(psub._nms, request, reply=psub._deliver)
    sub = psub._sub
    queue = sub._pending_queue
    msgs: list[Msg] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):  # one timer for the whole batch
            while len(msgs) < batch:
                msg = await queue.get()
                sub._pending_size -= len(msg.data)  # the client's slow-consumer accounting
                queue.task_done()
                status = msg.headers.get(api.Header.STATUS) if msg.headers else None
                if status is None:
                    msgs.append(msg)
                elif status != api.StatusCode.CONTROL_MESSAGE:  # not a heartbeat:
                    break  # no more messages now (404), or the request ended (408, 409)
    return msgs


async def read_subject(
    js: JetStreamContext, stream: str, filter_subject: str, batch: int = 500, timeout_s: float = 2.0
) -> list[Msg]:
    """Every message of ``stream`` matching ``filter_subject`` that exists now, in stream order."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=filter_subject,
        inactive_threshold=_READ_BACK_INACTIVE_S,
        mem_storage=True,
    )
    psub = await js.pull_subscribe(filter_subject, stream=stream, config=config)
    found: list[Msg] = []
    consumer_name = ""
    try:
        info = await psub.consumer_info()
        consumer_name = info.name
        remaining = int(info.num_pending or 0)
        while remaining > 0:
            try:
                msgs = await psub.fetch(min(batch, remaining), timeout=timeout_s)
            except TimeoutError:
                break  # messages removed (age, purge) since the count: what came is all there is
            found.extend(msgs)
            remaining = int(msgs[-1].metadata.num_pending) if msgs else 0
    finally:
        if consumer_name:
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, consumer_name)
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
    return found


async def publish_parked(
    js: JetStreamContext, subject: str, data: bytes, dedupe_id: str, headers: dict[str, str]
) -> None:
    """Store a message that could not be handled; ``dedupe_id`` makes parking it twice a no-op."""
    await js.publish(subject, data, headers={"Nats-Msg-Id": dedupe_id, **headers})
