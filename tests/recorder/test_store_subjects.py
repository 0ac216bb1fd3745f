"""Each store's consumer reads only the stream subjects its events come on (NATS 2.10+ for several).

What a store keeps is decided twice: ``accepts`` by message type, ``stream_subjects`` by subject (so
the server does not hand, and the recorder pull, decode and ack, what the store drops). These tests
keep the two in agreement, check the filters reach the server and that a consumer made before with
other filters keeps its place, and that a view of a call waits for the whole-stream consumer
instead of reading the call back.
"""

from __future__ import annotations

import asyncio
import types
import typing
from typing import Any

import msgspec
import nats
import pytest

from voiceplatform import subjects
from voiceplatform.bus.jetstream import DurableConsumer, StreamSpec, ensure_stream
from voiceplatform.wire import ControlInterrupt, Message, encode
from voiceplatform.wire.codec import MESSAGE_TYPES
from vp_recorder.ledger import GAP_STALL_S, CallLedger
from vp_recorder.public import NatsEventsStore
from vp_recorder.stored import StoredEvent
from vp_recorder.stores.mongo import MongoStore
from vp_recorder.stores.postgres import PostgresStore
from vp_recorder.stores.redis import RedisStore
from vp_recorder.stores.reports import ReportsStore

STORES = (PostgresStore, RedisStore, NatsEventsStore, ReportsStore, MongoStore)
CALL = "subjects-1"

# the subject each recorded message type is published on (by gateways, workers and the recorder)
PUBLISHED_ON = {
    "call.started": subjects.lifecycle(CALL),
    "call.ended": subjects.lifecycle(CALL),
    "call.dialed": subjects.lifecycle(CALL),
    "call.amd": subjects.lifecycle(CALL),
    "call.recording": subjects.lifecycle(CALL),
    "call.dtmf": subjects.lifecycle(CALL),
    "call.no_input": subjects.lifecycle(CALL),
    "turn.metrics": subjects.turn_report(CALL),
    "prompt.switched": subjects.lifecycle(CALL),
    "playback.started": subjects.turn_report(CALL),
    "stage.error": subjects.lifecycle(CALL),
    "assign.changed": subjects.lifecycle(CALL),
    "provider.usage": subjects.usage(CALL),
    "control.interrupt": subjects.control(CALL),
    "control.hangup": subjects.control(CALL),
    "control.transfer": subjects.control(CALL),
    "control.record": subjects.control(CALL),
    "asr.final": subjects.asr(CALL),
    "asr.partial": subjects.asr(CALL),
    "llm.sentence": subjects.llm_sentence(CALL),
    "llm.done": subjects.llm_done(CALL),
    "vad.speech_started": subjects.vad(CALL),
    "vad.speech_ended": subjects.vad(CALL),
    "vad.speech_paused": subjects.vad(CALL),
    "vad.speech_resumed": subjects.vad(CALL),
}


def _value(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return None
    plain = {str: "x", int: 1, float: 1.0, bool: False, bytes: b"", list: [], dict: {}}
    return plain.get(typing.get_origin(annotation) or annotation)


def examples(cls: type[Message]) -> list[Message]:
    """An instance of ``cls`` with its required fields filled; a barge-in for control.interrupt
    (the public events keep only those)."""
    hints = typing.get_type_hints(cls)
    required = {f.encode_name: _value(hints[f.name]) for f in msgspec.structs.fields(cls) if f.required}
    made = [msgspec.convert({**required, "call_id": CALL}, cls, strict=False)]
    if cls is ControlInterrupt:
        made.append(ControlInterrupt(call_id=CALL, turn_id="t1", reason="barge_in", by_turn_id="t2"))
    return made


def accepted_types(store: type) -> set[str]:
    tags = set()
    for cls in MESSAGE_TYPES:
        if any(store.accepts(_ANY, m) for m in examples(cls)):  # accepts reads only the message
            tags.add(str(cls.__struct_config__.tag))
    return tags


_ANY: Any = object()


def matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    if p[-1] == ">":
        return len(s) >= len(p) and all(a in ("*", b) for a, b in zip(p[:-1], s, strict=False))
    return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s, strict=True))


FILTERED = [s for s in STORES if s.stream_subjects is not None]


@pytest.mark.parametrize("store", FILTERED, ids=lambda s: s.name)
def test_a_store_reads_every_subject_its_events_come_on(store: type) -> None:
    accepted = accepted_types(store)
    assert accepted, "no message type accepted: the examples are wrong"
    assert accepted <= set(PUBLISHED_ON), f"say where these are published: {accepted - set(PUBLISHED_ON)}"
    for tag in accepted:
        subject = PUBLISHED_ON[tag]
        assert any(matches(p, subject) for p in store.stream_subjects), (store.name, tag, subject)
        assert any(matches(p, subject) for p in subjects.RECORDED), (tag, "is not recorded at all")


def test_only_the_postgres_store_reads_the_whole_stream() -> None:
    # the call ledger is complete only through a consumer that reads every subject
    assert [s.name for s in STORES if s.stream_subjects is None] == ["postgres"]
    # and the others leave out what they drop: vad events, sentences, usage (Mongo keeps usage)
    assert subjects.any_call("vad") not in {p for s in STORES if s.stream_subjects for p in s.stream_subjects}


async def test_filters_reach_the_server_and_an_older_durable_keeps_its_place(js_nats_url: str) -> None:
    nc = await nats.connect(js_nats_url)
    js = nc.jetstream()
    stream = "SUBJECTS_TEST"
    try:
        await ensure_stream(js, StreamSpec(stream, subjects.RECORDED, max_age_s=600))
        await nc.publish(subjects.lifecycle(CALL), b"1")
        await nc.publish(subjects.vad(CALL), b"2")
        await nc.publish(subjects.asr(CALL), b"3")
        await nc.flush()
        # made unfiltered (as before this change), it has read one message
        old = DurableConsumer(js, stream, "redis_like")
        await old.start()
        [first] = await old.fetch(1, 1.0)
        await first.ack()
        await old.stop()
        await asyncio.sleep(0.1)  # the ack reaches the server before the update

        now = DurableConsumer(js, stream, "redis_like", filter_subjects=RedisStore.stream_subjects)
        await now.start()
        info = await js.consumer_info(stream, "redis_like")
        assert sorted(info.config.filter_subjects or []) == sorted(RedisStore.stream_subjects)
        assert now.filtered == RedisStore.stream_subjects
        # the vad event is not delivered; the asr one is, after the one read before (not again)
        got = await now.fetch(10, 1.0)
        assert [m.subject for m in got] == [subjects.asr(CALL)]
        await now.stop()
    finally:
        await js.delete_stream(stream)
        await nc.close()


def stored(seq: int, message: Message) -> StoredEvent:
    return StoredEvent(seq, subjects.lifecycle(message.call_id), message)


class Stream:
    def __init__(self, events: list[StoredEvent]) -> None:
        self.events, self.reads = events, 0

    async def read_call(self, call_id: str) -> list[StoredEvent]:
        self.reads += 1
        return [e for e in self.events if e.call_id == call_id]


async def test_a_view_waits_for_the_whole_stream_consumer_instead_of_reading_back() -> None:
    from voiceplatform.wire import AsrFinal, CallEnded, CallStarted

    events = [
        stored(1, CallStarted(call_id=CALL, robot="demo", channel="phone", sample_rate=8000)),
        StoredEvent(2, subjects.asr(CALL), AsrFinal(call_id=CALL, turn_id="t1", text="алло")),
        stored(3, CallEnded(call_id=CALL, reason="caller_hangup")),
    ]
    stream = Stream(events)
    ledger = CallLedger(stream)

    def note(event: StoredEvent) -> None:
        ledger.note(event.seq, event, encode(event.message))

    # the lifecycle-only consumer has call.started and call.ended; the whole-stream one is behind
    note(events[0])
    note(events[2])
    reading = asyncio.ensure_future(ledger.read_call(CALL))
    await asyncio.sleep(0.1)
    assert not reading.done()
    note(events[1])  # the whole-stream consumer fetches the rest
    assert [e.seq for e in await reading] == [1, 2, 3]
    assert stream.reads == 0

    # a gap that does not close (another recorder has that message): read back once it is stale
    other = CallLedger(stream)
    for event in (events[0], events[2]):
        other.note(event.seq, event, encode(event.message))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert [e.seq for e in await other.read_call(CALL)] == [1, 2, 3]
    assert stream.reads == 1
    assert loop.time() - started < 2.0  # gave up when the gap was stale, not at the limit
    # and a later call's end behind the same stale gap does not wait at all
    later = [
        stored(4, CallStarted(call_id="subjects-2", robot="demo", channel="phone", sample_rate=8000)),
        stored(6, CallEnded(call_id="subjects-2", reason="caller_hangup")),
    ]
    stream.events += later
    for event in later:
        other.note(event.seq, event, encode(event.message))
    started = loop.time()
    assert [e.seq for e in await other.read_call("subjects-2")] == [4, 6]
    assert stream.reads == 2 and loop.time() - started < GAP_STALL_S

    # a recorder that drains does not wait for its stopping Postgres consumer
    draining = CallLedger(stream)
    for event in (events[0], events[2]):
        draining.note(event.seq, event, encode(event.message))
    draining.waiting = False
    started = loop.time()
    await draining.read_call(CALL)
    assert loop.time() - started < GAP_STALL_S and stream.reads == 3


async def test_a_stream_only_gains_subjects_an_older_instance_cannot_drop_them(js_nats_url: str) -> None:
    nc = await nats.connect(js_nats_url)
    js = nc.jetstream()
    stream = "SUBJECTS_UPGRADE"
    before = tuple(s for s in subjects.RECORDED if s not in (subjects.ANY_USAGE, subjects.ANY_TURN_REPORT))
    try:
        await ensure_stream(js, StreamSpec(stream, before, max_age_s=600))  # made by an older version
        await ensure_stream(js, StreamSpec(stream, subjects.RECORDED, max_age_s=600))  # the new one
        assert set((await js.stream_info(stream)).config.subjects or []) == set(subjects.RECORDED)
        await ensure_stream(js, StreamSpec(stream, before, max_age_s=600))  # an older one restarts
        assert set((await js.stream_info(stream)).config.subjects or []) == set(subjects.RECORDED)
        await nc.publish(subjects.turn_report(CALL), b"kept")
        await nc.flush()
        await asyncio.sleep(0.1)
        assert (await js.stream_info(stream)).state.messages == 1
    finally:
        await js.delete_stream(stream)
        await nc.close()
