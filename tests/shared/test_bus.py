"""The same assertions against the in-memory twin and against real NATS (FastStream's with_real idea)."""

import asyncio
import uuid

import pytest

from tests.waiting import wait_for
from voiceplatform import metrics
from voiceplatform.bus import Envelope, KvConflict, NoResponders
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import AsrFinal, AssignReply, AssignRequest


@pytest.fixture(params=["memory", "nats"])
async def buses(request):
    """Two independent connections (like two processes) to one broker."""
    if request.param == "memory":
        broker = MemoryBroker()
        a, b = broker.bus("a"), broker.bus("b")
        yield a, b
        await a.close()
        await b.close()
    else:
        url = request.getfixturevalue("nats_url")
        a, b = await NatsBus.connect(url, "a"), await NatsBus.connect(url, "b")
        yield a, b
        await a.close()
        await b.close()


def unique() -> str:
    return uuid.uuid4().hex[:10]


async def test_publish_subscribe_in_order(buses):
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got: list[str] = []

    async def handler(env: Envelope):
        got.append(env.message.text)

    await b.subscribe(subject, handler)
    await asyncio.sleep(0.05)
    for i in range(50):
        await a.publish(subject, AsrFinal(call_id="c", turn_id="t", text=str(i)))
    await wait_for(lambda: len(got) == 50)
    assert got == [str(i) for i in range(50)]


async def test_queue_group_delivers_each_message_once(buses):
    a, b = buses
    prefix = unique()
    seen: list[tuple[str, str]] = []

    def member(name):
        async def handler(env: Envelope):
            seen.append((name, env.message.text))

        return handler

    await a.subscribe(f"vp.call.*.{prefix}", member("a"), queue="workers")
    await b.subscribe(f"vp.call.*.{prefix}", member("b"), queue="workers")
    await asyncio.sleep(0.05)
    for i in range(40):
        await a.publish(f"vp.call.c{i}.{prefix}", AsrFinal(call_id="c", turn_id="t", text=str(i)))
    await wait_for(lambda: len(seen) == 40)
    await asyncio.sleep(0.1)
    assert sorted(int(t) for _, t in seen) == list(range(40))  # exactly once each


async def test_request_reply_and_no_responders(buses):
    a, b = buses
    subject = f"vp.svc.{unique()}.assign"

    async def handler(env: Envelope):
        return AssignReply(call_id=env.message.call_id, role="vad", accepted=True, instance_id="b1")

    with pytest.raises(NoResponders):
        await a.request(subject, AssignRequest(call_id="c", role="vad", robot="r", sample_rate=8000), 0.5)
    await b.subscribe(subject, handler, queue="vad")
    await asyncio.sleep(0.05)
    reply = await a.request(
        subject, AssignRequest(call_id="c9", role="vad", robot="r", sample_rate=8000), 1.0
    )
    assert isinstance(reply, AssignReply) and reply.accepted and reply.call_id == "c9"


async def test_garbage_is_counted_and_the_subscription_survives(buses):
    a, b = buses
    call = unique()
    subject = f"vp.call.{call}.asr"
    got = []

    async def handler(env: Envelope):
        got.append(env.message)

    before = metrics.MESSAGES_DROPPED.labels("b", "asr", "not_msgpack")._value.get()
    await b.subscribe(subject, handler)
    await asyncio.sleep(0.05)
    await a.publish_bytes(subject, b"\xc1\xc1 not msgpack")
    await a.publish(subject, AsrFinal(call_id=call, turn_id="t", text="ok"))
    await wait_for(lambda: len(got) == 1)
    assert metrics.MESSAGES_DROPPED.labels("b", "asr", "not_msgpack")._value.get() == before + 1


async def test_handler_exception_does_not_kill_subscription(buses):
    a, b = buses
    subject = f"vp.call.{unique()}.asr"
    got = []

    async def handler(env: Envelope):
        if env.message.text == "boom":
            raise RuntimeError("handler bug")
        got.append(env.message.text)

    await b.subscribe(subject, handler)
    await asyncio.sleep(0.05)
    await a.publish(subject, AsrFinal(call_id="c", turn_id="t", text="boom"))
    await a.publish(subject, AsrFinal(call_id="c", turn_id="t", text="after"))
    await wait_for(lambda: got == ["after"])


async def test_key_value_compare_and_set(buses):
    a, b = buses
    bucket = "vp_test_kv"
    kv_a, kv_b = await a.key_value(bucket), await b.key_value(bucket)
    key = unique()
    rev = await kv_a.create(key, b"one")
    with pytest.raises(KvConflict):
        await kv_b.create(key, b"again")
    value, seen_rev = await kv_b.get(key)
    assert value == b"one" and seen_rev == rev
    rev2 = await kv_b.update(key, b"two", last=rev)
    with pytest.raises(KvConflict):
        await kv_a.update(key, b"stale", last=rev)
    assert (await kv_a.get(key))[0] == b"two" and rev2 > rev
    await kv_a.delete(key)
    assert await kv_b.get(key) is None
