"""A work consumer on a subject that carries more than its work (the router's lifecycle consumer):
the other message types are acked at once and never reach the handler."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import nats.errors
import pytest
from prometheus_client import REGISTRY

from tests.waiting import wait_for
from voiceplatform.bus import streams
from voiceplatform.bus.base import Envelope
from voiceplatform.bus.jetstream import StreamSpec
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.work import WorkSpec, take_work
from voiceplatform.wire import CallEnded, CallStarted, Message, ProviderUsage


def other_messages(call_id: str) -> list[Message]:
    return [
        ProviderUsage(call_id=call_id, turn_id="t1", stage="asr", provider="x"),
        CallEnded(call_id=call_id, reason="hangup"),
    ]


def started(call_id: str) -> CallStarted:
    return CallStarted(call_id=call_id, robot="r", channel="phone", sample_rate=8000)


def spec_for(tag: str) -> WorkSpec:
    subject = f"vp.worktypes.{tag}.lifecycle"
    return WorkSpec(
        StreamSpec(f"VP_WORKTYPES_{tag}", (subject,), max_age_s=60.0, duplicate_window_s=10.0),
        f"wt{tag}",
        subject,
        takes=(CallStarted,),
    )


async def test_only_the_work_types_reach_the_handler_and_the_rest_is_acked(nats_bus: NatsBus) -> None:
    tag = uuid.uuid4().hex[:8]
    spec = spec_for(tag)
    taken: list[Message] = []

    async def handler(env: Envelope, _attempt: int) -> None:
        taken.append(env.message)

    source = await take_work(nats_bus, spec, handler)
    try:
        for message in [*other_messages("c1"), started("c1"), *other_messages("c2")]:
            await nats_bus.publish(spec.filter_subject, message)
        await wait_for(lambda: len(taken) == 1)
        js = nats_bus.jetstream()

        async def settled() -> bool:
            info = await js.consumer_info(spec.stream.name, spec.consumer)
            return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0

        for _ in range(200):
            if await settled():
                break
            await asyncio.sleep(0.05)
        assert await settled()  # the skipped ones are acked, not left to come again
        assert [type(m) for m in taken] == [CallStarted]
        skipped = REGISTRY.get_sample_value(
            "vp_work_messages_total", {"consumer": spec.consumer, "outcome": "skipped"}
        )
        assert skipped == 4
    finally:
        await source.stop(2.0)
        await nats_bus.jetstream().delete_stream(spec.stream.name)


async def test_the_in_memory_bus_skips_them_too(broker: MemoryBroker) -> None:
    spec = spec_for(uuid.uuid4().hex[:8])
    bus = broker.bus("worker")
    taken: list[Message] = []

    async def handler(env: Envelope, _attempt: int) -> None:
        taken.append(env.message)

    source = await take_work(bus, spec, handler)
    try:
        for message in [*other_messages("c1"), started("c1")]:
            await broker.bus("gateway").publish(spec.filter_subject, message)
        await wait_for(lambda: len(taken) == 1)
        assert [type(m) for m in taken] == [CallStarted]
    finally:
        await source.stop(2.0)


async def test_a_worker_starting_while_the_cluster_does_not_answer_waits_for_it(
    nats_bus: NatsBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster electing leaders JetStream's API times out for a while: start retries, not exits."""
    spec = spec_for(uuid.uuid4().hex[:8])
    real, attempts = streams._stream_for, []

    async def electing(js: Any, stream: StreamSpec) -> str:
        attempts.append(stream.replicas)
        if len(attempts) == 1:
            raise nats.errors.TimeoutError
        return await real(js, dataclasses.replace(stream, replicas=1))  # one node here

    async def handler(env: Envelope, _attempt: int) -> None:
        return None

    monkeypatch.setattr(streams, "_stream_for", electing)
    monkeypatch.setattr(nats_bus, "js_replicas", 3)
    source = await take_work(nats_bus, spec, handler)
    try:
        assert attempts == [3, 3]
    finally:
        await source.stop(2.0)
        await nats_bus.jetstream().delete_stream(spec.stream.name)
