"""Inline subscriptions (``bus/inline.py``): the same rules as a plain subscription (one at a time, in
order, failures contained, bad bytes counted), against the in-memory twin and real NATS."""

import asyncio
import contextvars
import uuid

import pytest

from tests.shared.test_bus import buses  # noqa: F401  (the fixture: memory and nats)
from tests.waiting import wait_for
from voiceplatform import metrics
from voiceplatform.bus import Envelope
from voiceplatform.bus.inline import MAX_BACKLOG, InlineDelivery
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import AsrFinal, encode
from voiceplatform_devstack.devinfra import TcpGate

SETTLE_S = 0.05  # after subscribing, before the other connection publishes (as in test_bus.py)
CURRENT = contextvars.ContextVar("CURRENT", default="")


def unique() -> str:
    return uuid.uuid4().hex[:10]


def final(text: str) -> AsrFinal:
    return AsrFinal(call_id="c", turn_id="t", text=text)


def handled(service: str, stage: str, reason: str) -> float:
    return metrics.MESSAGES_DROPPED.labels(service, stage, reason)._value.get()


async def test_messages_are_handled_in_order_and_a_wait_holds_the_ones_after_it(buses):  # noqa: F811
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []
    release = asyncio.Event()

    async def slow(text: str) -> None:
        await release.wait()
        got.append(text)

    def handler(env: Envelope):
        text = env.message.text
        if text == "3":  # this one has to wait: the ones after it must not overtake it
            return slow(text)
        got.append(text)
        return None

    await b.subscribe_inline(subject, handler)
    await asyncio.sleep(SETTLE_S)
    for i in range(10):
        await a.publish(subject, final(str(i)))
    await wait_for(lambda: got == ["0", "1", "2"])
    await asyncio.sleep(0.1)
    assert got == ["0", "1", "2"]  # 4..9 were read, and wait behind 3
    release.set()
    await wait_for(lambda: len(got) == 10)
    assert got == [str(i) for i in range(10)]


async def test_a_failing_handler_is_counted_and_the_next_message_still_handled(buses):  # noqa: F811
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []
    before = metrics.HANDLER_ERRORS.labels(b.service, "asr")._value.get()

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("after a wait")

    def handler(env: Envelope):
        text = env.message.text
        if text == "now":
            raise RuntimeError("at once")
        if text == "later":
            return fails_later()
        got.append(text)
        return None

    await b.subscribe_inline(subject, handler)
    await asyncio.sleep(SETTLE_S)
    for text in ("a", "now", "b", "later", "c"):
        await a.publish(subject, final(text))
    await wait_for(lambda: got == ["a", "b", "c"])
    assert metrics.HANDLER_ERRORS.labels(b.service, "asr")._value.get() == before + 2


async def test_bytes_that_are_no_message_are_counted_not_handled(buses):  # noqa: F811
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []

    def handler(env: Envelope) -> None:
        got.append(env.message.text)

    before = sum(handled(b.service, "asr", reason) for reason in ("not_msgpack", "unknown_type", "invalid"))
    await b.subscribe_inline(subject, handler)
    await asyncio.sleep(SETTLE_S)
    await a.publish_bytes(subject, b"\xc1garbage")
    await a.publish(subject, final("after"))
    await wait_for(lambda: got == ["after"])
    after = sum(handled(b.service, "asr", reason) for reason in ("not_msgpack", "unknown_type", "invalid"))
    assert after == before + 1


async def test_each_subscription_runs_in_a_context_of_its_own(buses):  # noqa: F811
    """A handler binding a context variable (a call's log context) does not leak it into the bus's
    read loop or another call's subscription."""
    a, b = buses
    seen: dict[str, list[str]] = {"x": [], "y": []}
    subjects = {name: f"vp.call.{unique()}.asr" for name in seen}

    def handler_for(name: str):
        def handler(env: Envelope) -> None:
            seen[name].append(CURRENT.get())
            CURRENT.set(name)

        return handler

    for name, subject in subjects.items():
        await b.subscribe_inline(subject, handler_for(name))
    await asyncio.sleep(SETTLE_S)
    for _ in range(3):
        for subject in subjects.values():
            await a.publish(subject, final("."))
    await wait_for(lambda: len(seen["x"]) == 3 and len(seen["y"]) == 3)
    assert seen == {"x": ["", "x", "x"], "y": ["", "y", "y"]}
    assert CURRENT.get() == ""


async def test_unsubscribed_means_nothing_more_is_handled(buses):  # noqa: F811
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []
    waiting = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def handler(env: Envelope):
        got.append(env.message.text)
        return forever() if env.message.text == "wait" else None

    sub = await b.subscribe_inline(subject, handler)
    await asyncio.sleep(SETTLE_S)
    await a.publish(subject, final("wait"))
    await a.publish(subject, final("behind"))
    await asyncio.wait_for(waiting.wait(), 5)
    await sub.unsubscribe()
    assert cancelled.is_set()  # as a plain subscription's task is cancelled
    await a.publish(subject, final("late"))
    await asyncio.sleep(0.2)
    assert got == ["wait"]


async def test_drain_handles_what_was_read_first(buses):  # noqa: F811
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []

    async def slow(text: str) -> None:
        await asyncio.sleep(0.05)
        got.append(text)

    def handler(env: Envelope):
        return slow(env.message.text)

    await b.subscribe_inline(subject, handler)
    await asyncio.sleep(SETTLE_S)
    for i in range(5):
        await a.publish(subject, final(str(i)))
    await wait_for(lambda: len(got) >= 1)
    await b.drain()
    assert got == [str(i) for i in range(5)]


async def test_a_backlog_past_its_bound_is_dropped_and_counted() -> None:
    delivery = InlineDelivery("inline-test", lambda env: asyncio.Event().wait())
    before = handled("inline-test", "asr", "slow_consumer")
    data = encode(final("x"))
    for _ in range(MAX_BACKLOG + 6):
        delivery.deliver("vp.call.c.asr", data)
    assert delivery.pending == MAX_BACKLOG  # the first one is waiting, the bound is held behind it
    assert delivery.dropped == 5 and handled("inline-test", "asr", "slow_consumer") == before + 5
    await delivery.close()
    assert delivery.pending == 0


@pytest.mark.parametrize("kind", ["plain", "inline"])
async def test_a_plain_and_an_inline_subscription_see_the_same_messages(buses, kind):  # noqa: F811
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []

    async def plain(env: Envelope) -> None:
        got.append(env.message.text)

    def inline(env: Envelope) -> None:
        got.append(env.message.text)

    if kind == "plain":
        await b.subscribe(subject, plain)
    else:
        await b.subscribe_inline(subject, inline)
    await asyncio.sleep(SETTLE_S)
    for i in range(100):
        await a.publish(subject, final(str(i)))
    await wait_for(lambda: len(got) == 100)
    assert got == [str(i) for i in range(100)]


async def test_closed_before_its_wait_ran_a_drain_returns_at_once() -> None:
    """A close that cancels a wait before its task ran leaves nothing for a later drain to wait on."""
    delivery = InlineDelivery("inline-test", lambda env: asyncio.Event().wait())
    delivery.deliver("vp.call.c.asr", encode(final("x")))
    await delivery.close()
    await asyncio.wait_for(delivery.join(), 1)
    delivery.deliver("vp.call.c.asr", encode(final("y")))  # closed: ignored
    assert delivery.pending == 0


async def test_an_inline_subscription_lives_through_a_reconnect(nats_url: str) -> None:
    """nats-py subscribes its subscriptions again after a reconnect, reusing the objects: the
    inline queue in place of the pending one is still there. The outage is a gate in front of the
    server that cuts b's connection (the server drops b's interest, as a restart would)."""
    gate = TcpGate.in_front_of(nats_url, 4222)
    await gate.open()
    a, b = await NatsBus.connect(nats_url, "a"), await NatsBus.connect(gate.url_via_gate(nats_url), "b")
    try:
        subject = f"vp.call.{unique()}.asr"
        got: list[str] = []

        def handler(env: Envelope) -> None:
            got.append(env.message.text)

        await b.subscribe_inline(subject, handler)
        await asyncio.sleep(SETTLE_S)
        await a.publish(subject, final("before"))
        await wait_for(lambda: got == ["before"])
        await gate.close()
        await wait_for(lambda: not b.connected, timeout=10)
        await gate.open()
        await wait_for(lambda: b.connected, timeout=15)
        for _ in range(50):  # until b's SUB is back at the server (a publish before it is lost)
            await a.publish(subject, final("after"))
            if "after" in got:
                break
            await asyncio.sleep(0.1)
        assert got[0] == "before" and "after" in got
    finally:
        await a.close()
        await b.close()
        await gate.close()


async def test_a_handler_that_unsubscribes_its_own_subscription_returns(buses):  # noqa: F811
    """As a session closing on its own audio would: no wait on itself, nothing handled after."""
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []
    subs = []

    async def close_now() -> None:
        await asyncio.sleep(0)
        await subs[0].unsubscribe()
        got.append("closed")

    def handler(env: Envelope):
        got.append(env.message.text)
        return close_now() if env.message.text == "stop" else None

    subs.append(await b.subscribe_inline(subject, handler))
    await asyncio.sleep(SETTLE_S)
    for text in ("a", "stop", "b"):
        await a.publish(subject, final(text))
    await wait_for(lambda: got[-1:] == ["closed"])
    await asyncio.sleep(0.1)
    assert got == ["a", "stop", "closed"]
