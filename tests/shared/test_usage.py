"""The shared provider-usage helper: the ``provider.usage`` message, its counters, its outcomes."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from prometheus_client import REGISTRY

from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker, MemoryBus
from voiceplatform.providers import ProviderConnectionError, ProviderTimeoutError
from voiceplatform.providers.usage import outcome_of, publish_usage
from voiceplatform.wire import Message, ProviderUsage, decode, encode


def metric(stage: str, provider: str, unit: str) -> float:
    labels = {"stage": stage, "provider": provider, "unit": unit}
    return REGISTRY.get_sample_value("vp_provider_usage_total", labels) or 0.0


def test_the_message_is_additive_with_readable_keys_and_defaults() -> None:
    msg = ProviderUsage(call_id="c1", turn_id="t1", stage="tts", provider="festival", characters=12)
    raw = msgpack.unpackb(encode(msg))
    assert raw["type"] == "provider.usage" and raw["v"] == 1
    assert (raw["model"], raw["audio_ms"], raw["prompt_tokens"], raw["outcome"]) == ("", 0, 0, "ok")
    assert decode(encode(msg)) == msg
    # a stage or outcome this code does not know yet still decodes (plain strings, not enums)
    raw.update(stage="video", outcome="throttled", added_later=1)
    later = decode(msgpack.packb(raw))
    assert isinstance(later, ProviderUsage) and (later.stage, later.outcome) == ("video", "throttled")


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [
        (None, "ok"),
        (asyncio.CancelledError(), "cancelled"),
        (ProviderTimeoutError("x", "stalled"), "timeout"),
        (TimeoutError(), "timeout"),
        (ProviderConnectionError("x", "reset"), "failed"),
        (RuntimeError("bug"), "failed"),
    ],
)
def test_outcome_of_an_attempt(ending: BaseException | None, outcome: str) -> None:
    assert outcome_of(ending) == outcome


async def test_publish_counts_each_unit_and_publishes_on_the_usage_subject(broker: MemoryBroker) -> None:
    watch = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    before = {
        unit: metric("llm", "usage-test", unit)
        for unit in ("requests", "failed_requests", "prompt_tokens", "completion_tokens", "characters")
    }
    bus = broker.bus("llm")
    await publish_usage(
        bus, "call-u1", stage="llm", provider="usage-test", turn_id="t1", model="m1", prompt_tokens=40
    )
    await publish_usage(
        bus,
        "call-u1",
        stage="llm",
        provider="usage-test",
        turn_id="t2",
        prompt_tokens=10,
        completion_tokens=3,
        outcome="timeout",
    )
    first, second = await watch.wait(ProviderUsage, count=2)
    assert {s for _, s, _ in watch.items} == {subjects.usage("call-u1")}
    assert (first.turn_id, first.model, first.prompt_tokens, first.outcome) == ("t1", "m1", 40, "ok")
    assert (second.turn_id, second.completion_tokens, second.outcome) == ("t2", 3, "timeout")
    assert metric("llm", "usage-test", "requests") == before["requests"] + 2
    assert metric("llm", "usage-test", "failed_requests") == before["failed_requests"] + 1
    assert metric("llm", "usage-test", "prompt_tokens") == before["prompt_tokens"] + 50
    assert metric("llm", "usage-test", "completion_tokens") == before["completion_tokens"] + 3
    assert metric("llm", "usage-test", "characters") == before["characters"]  # nothing of that unit


class _ClosedBus(MemoryBus):
    async def publish(self, subject: str, msg: Message, msg_id: str = "") -> None:
        raise ConnectionError("closed")


async def test_a_failed_publish_never_raises_and_is_still_counted(broker: MemoryBroker) -> None:
    bus = _ClosedBus(broker, "closed")
    before = metric("asr", "usage-closed", "audio_seconds")
    await publish_usage(bus, "call-u2", stage="asr", provider="usage-closed", turn_id="t1", audio_ms=1500)
    assert metric("asr", "usage-closed", "audio_seconds") == pytest.approx(before + 1.5)
