"""The public call events contract: docs/asyncapi.yaml, the payloads the recorder builds, the example.

(a) the AsyncAPI document is well formed and names every channel and type; (b) payloads built by
``public_event`` from real wire messages validate against the document's JSON Schemas, and broken
ones do not; (c) examples/call_events_subscriber.py, run as a process against real NATS, prints
each event once (a repeated ``id`` is skipped) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from voiceplatform.wire import (
    AsrFinal,
    CallAmd,
    CallDialed,
    CallEnded,
    CallRecording,
    CallStarted,
    ControlInterrupt,
    Message,
    PromptSwitched,
    StageError,
    TurnMetrics,
)
from vp_recorder.events import encode_public, public_event
from vp_recorder.stored import StoredEvent
from vp_recorder.summary import call_summary

REPO = Path(__file__).resolve().parents[2]
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"
SUBSCRIBER = REPO / "examples" / "call_events_subscriber.py"
DOC_URI = "urn:voice-platform:asyncapi"
SCHEMA_OF_TYPE = {
    "call.started": "CallStartedEvent",
    "turn.completed": "TurnCompletedEvent",
    "prompt.switched": "PromptSwitchedEvent",
    "barge_in": "BargeInEvent",
    "call.ended": "CallEndedEvent",
    "call.dialed": "CallDialedEvent",
    "call.amd": "CallAmdEvent",
    "call.recording": "CallRecordingEvent",
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return loaded


def validator(doc: dict[str, Any], schema_name: str) -> Draft7Validator:
    """A validator for one of ``components.schemas``; its $refs resolve inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT7)
    )
    return Draft7Validator({"$ref": f"{DOC_URI}#/components/schemas/{schema_name}"}, registry=registry)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs_in(item)


# ---- (a) the document ----------------------------------------------------------------------------


def test_document_is_asyncapi_3_with_every_channel_and_type(doc: dict[str, Any]) -> None:
    assert str(doc["asyncapi"]).startswith("3.")
    assert {"title", "version"} <= set(doc["info"])
    channels = doc["channels"]
    addresses = {c["address"] for c in channels.values()}
    assert addresses == {f"call_events.{t}" for t in SCHEMA_OF_TYPE} | {"call_events"}
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == set(SCHEMA_OF_TYPE)
    protocols = {s["protocol"] for s in doc["servers"].values()}
    assert protocols == {"nats", "redis"}

    for channel in channels.values():
        carried = {resolve(doc, m["$ref"])["name"] for m in channel["messages"].values()}
        if channel["address"] == "call_events":  # Redis: every type on one channel
            assert carried == set(SCHEMA_OF_TYPE)
            assert [resolve(doc, s["$ref"])["protocol"] for s in channel["servers"]] == ["redis"]
        else:
            assert carried == {channel["address"].removeprefix("call_events.")}
            assert [resolve(doc, s["$ref"])["protocol"] for s in channel["servers"]] == ["nats"]


def test_every_reference_resolves_and_operations_use_their_channels_messages(doc: dict[str, Any]) -> None:
    for ref in refs_in(doc):
        resolve(doc, ref)
    for operation in doc["operations"].values():
        assert operation["action"] in {"send", "receive"}
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/")


def test_schemas_are_valid_draft7_and_examples_validate(doc: dict[str, Any]) -> None:
    for schema in doc["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)
    for message in doc["components"]["messages"].values():
        schema_name = message["payload"]["$ref"].rsplit("/", 1)[1]
        assert SCHEMA_OF_TYPE[message["name"]] == schema_name
        assert message["examples"], f"{message['name']} has no example"
        for example in message["examples"]:
            validator(doc, schema_name).validate(example["payload"])
            assert example["payload"]["type"] == message["name"]


# ---- (b) payloads from real wire messages ----------------------------------------------------------


def a_call(call_id: str) -> list[StoredEvent]:
    """Every public type, plus events without a public form, as the stream holds them."""
    t0 = 1_763_700_000_000
    messages: list[Message] = [
        CallDialed(call_id=call_id, campaign_id="c1", number="79990001122", attempt=1, outcome="answered",
                   ts_ms=t0 - 10),
        CallStarted(call_id=call_id, robot="topic_prompts_russian", channel="phone", sample_rate=8000,
                    ts_ms=t0),
        CallRecording(call_id=call_id, action="start", path=f"/rec/{call_id}.wav", format="wav", channels=2,
                      ts_ms=t0 + 1),
        # the greeting: no caller speech to measure from
        TurnMetrics(call_id=call_id, turn_id=f"{call_id}-greeting", bot_text="Здравствуйте!", ts_ms=t0 + 900,
                    first_sentence_ts_ms=t0 + 100, first_audio_ts_ms=t0 + 300, first_played_ts_ms=t0 + 320),
        CallAmd(call_id=call_id, result="human", reason="short_hello", after_ms=900, action="greeting",
                ts_ms=t0 + 800),
        AsrFinal(call_id=call_id, turn_id="u1", text="у меня собака", ts_ms=t0 + 2400),
        PromptSwitched(call_id=call_id, turn_id="u1", from_prompt="default", to_prompt="pets",
                       matched="собака", ts_ms=t0 + 2500),
        TurnMetrics(call_id=call_id, turn_id="u1", user_text="у меня собака", bot_text="Для собак есть корм.",
                    speech_end_ts_ms=t0 + 2100, asr_final_ts_ms=t0 + 2410, first_sentence_ts_ms=t0 + 2620,
                    first_audio_ts_ms=t0 + 2790, first_played_ts_ms=t0 + 2912, ts_ms=t0 + 4000),
        ControlInterrupt(call_id=call_id, turn_id="u2", by_turn_id="u3", played_ms=700, played_text="Для",
                         ts_ms=t0 + 6000),
        StageError(call_id=call_id, stage="tts", kind="timeout", detail="slow", turn_id="u3",
                   ts_ms=t0 + 7000),
        CallEnded(call_id=call_id, reason="hangup", duration_ms=9000, turns=3, ts_ms=t0 + 9000),
        CallRecording(call_id=call_id, action="stop", path=f"/rec/{call_id}.wav", format="wav", channels=2,
                      duration_ms=8999, ts_ms=t0 + 9001),
    ]  # fmt: skip
    return [StoredEvent(seq, f"vp.call.{call_id}.lifecycle", m) for seq, m in enumerate(messages, 100)]


def public_payloads(events: list[StoredEvent]) -> list[dict[str, Any]]:
    """What the recorder publishes for these events, as a subscriber decodes it."""
    payloads = []
    for event in events:
        summary = call_summary(events) if isinstance(event.message, CallEnded) else None
        public = public_event(event.message, event.event_id, summary)
        if public is not None:
            payloads.append(json.loads(encode_public(public)))
    return payloads


def test_payloads_from_wire_messages_validate(doc: dict[str, Any]) -> None:
    payloads = public_payloads(a_call("contract-1"))
    assert [p["type"] for p in payloads] == [
        "call.dialed", "call.started", "call.recording", "turn.completed", "call.amd", "prompt.switched",
        "turn.completed", "barge_in", "call.ended", "call.recording",
    ]  # fmt: skip
    any_event = validator(doc, "CallEvent")
    for payload in payloads:
        validator(doc, SCHEMA_OF_TYPE[payload["type"]]).validate(payload)
        any_event.validate(payload)
        assert payload["id"].startswith("contract-1:")
    # the greeting: nothing measured from caller speech (null), but its TTS stage took 200 ms
    greeting_latency = payloads[3]["data"]["latency"]
    assert len(greeting_latency) == 7
    assert {k: v for k, v in greeting_latency.items() if v is not None} == {"tts_latency_ms": 200}
    assert payloads[6]["data"]["latency"]["voice_to_voice_ms"] == 812
    assert payloads[-2]["data"]["summary"]["errors"] == 1
    assert payloads[-1]["data"] == {
        "action": "stop", "path": "/rec/contract-1.wav", "format": "wav", "channels": 2, "duration_ms": 8999,
    }  # fmt: skip


def broken(payload: dict[str, Any], path: list[str], value: Any = ...) -> dict[str, Any]:
    """A deep copy with ``path`` removed (``value`` omitted) or set to ``value``."""
    copy: dict[str, Any] = json.loads(json.dumps(payload))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


@pytest.mark.parametrize(
    ("event_type", "path", "value"),
    [
        ("call.started", ["call_id"], ...),
        ("call.started", ["id"], ...),
        ("call.started", ["type"], 7),  # wrong JSON type
        ("call.started", ["type"], "call.begun"),  # unknown event type
        ("call.started", ["v"], 2),  # a newer version is another contract
        ("call.started", ["call_id"], "has.dots"),
        ("call.started", ["data", "channel"], "fax"),
        ("turn.completed", ["data", "latency", "tts_latency_ms"], ...),
        ("turn.completed", ["data", "latency", "voice_to_voice_ms"], "812"),
        ("turn.completed", ["data", "interrupted"], "no"),
        ("prompt.switched", ["data", "to_prompt"], ...),
        ("barge_in", ["data", "played_text"], ...),
        ("call.ended", ["data", "summary"], ...),
        ("call.ended", ["data", "summary", "barge_ins"], ...),
        ("call.ended", ["ts_ms"], "yesterday"),
        ("call.dialed", ["data", "outcome"], "maybe"),
        ("call.amd", ["data", "result"], ...),
        ("call.recording", ["data", "action"], "pause"),
        ("call.recording", ["data", "path"], ...),
    ],
)
def test_broken_payloads_fail(doc: dict[str, Any], event_type: str, path: list[str], value: Any) -> None:
    good = next(p for p in public_payloads(a_call("contract-2")) if p["type"] == event_type)
    bad = broken(good, path, value)
    assert not validator(doc, "CallEvent").is_valid(bad)
    assert not validator(doc, SCHEMA_OF_TYPE[event_type]).is_valid(bad)


def test_the_data_of_one_type_does_not_pass_as_another(doc: dict[str, Any]) -> None:
    started = next(p for p in public_payloads(a_call("contract-3")) if p["type"] == "call.started")
    assert not validator(doc, "CallEvent").is_valid({**started, "type": "call.ended"})


def test_future_fields_are_allowed(doc: dict[str, Any]) -> None:
    for payload in public_payloads(a_call("contract-4")):
        grown = {**payload, "trace": "x", "data": {**payload["data"], "added_later": [1, 2]}}
        validator(doc, "CallEvent").validate(grown)


# ---- (c) the example subscriber against real NATS --------------------------------------------------


async def start_subscriber(nats_url: str, *args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SUBSCRIBER), "--url", nats_url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 15)
    except TimeoutError:
        proc.kill()
        raise
    assert line.decode().strip() == "subscribed to call_events.>", line
    return proc


async def finish(proc: asyncio.subprocess.Process, within_s: float = 15) -> tuple[int, list[str], str]:
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), within_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, stdout.decode().splitlines(), stderr.decode()


async def test_example_subscriber_prints_each_event_once_and_exits(nats_url: str) -> None:
    call_id = f"sub-{uuid.uuid4().hex[:10]}"
    greeting = f"{call_id}-greeting"
    left_out = ("call.dialed", "call.amd", "call.recording")  # the subscriber's example call only
    payloads = [
        p
        for p in public_payloads(a_call(call_id))
        if p["data"].get("turn_id") != greeting and p["type"] not in left_out
    ]
    assert [p["type"] for p in payloads] == ["call.started", "prompt.switched", "turn.completed", "barge_in",
                                             "call.ended"]  # fmt: skip
    turn = payloads[2]
    other_call = {**payloads[0], "id": "another:1", "call_id": "another-call"}
    # the turn delivered twice (same id), and another call's event the filter must skip
    sent = [payloads[0], other_call, payloads[1], turn, turn, *payloads[2:]]
    proc = await start_subscriber(nats_url, "--count", str(len(payloads)), "--call-id", call_id)
    nc = await nats.connect(nats_url)
    try:
        for payload in sent:
            await nc.publish(f"call_events.{payload['type']}", encode_public(payload))
        await nc.flush()
        returncode, lines, stderr = await finish(proc)
    finally:
        await nc.close()
    assert returncode == 0, stderr
    assert [line.split()[:2] for line in lines] == [[p["type"], call_id] for p in payloads]
    assert lines[2] == f'turn.completed {call_id} v2v=812ms "у меня собака" -> "Для собак есть корм."'
    assert "barge_ins=1" in lines[-1] and "reason=hangup" in lines[-1]


async def test_example_subscriber_stops_on_sigint(nats_url: str) -> None:
    proc = await start_subscriber(nats_url, "--call-id", f"sub-{uuid.uuid4().hex[:10]}")
    proc.send_signal(signal.SIGINT)
    returncode, lines, stderr = await finish(proc)
    assert returncode == 0, stderr
    assert lines == []


def test_a_played_track_is_named_in_turn_completed(doc: dict[str, Any]) -> None:
    """llm_script robots: the recorded track the reply played (additive; null when synthesized)."""
    metrics = TurnMetrics(call_id="contract-5", turn_id="t1", user_text="когда вы работаете")
    played = msgspec.structs.replace(metrics, bot_text="С девяти до шести.", track="hours")
    payloads = [public_event(m, f"contract-5:{n}") for n, m in enumerate((metrics, played))]
    assert [p["data"]["track"] for p in payloads if p] == [None, "hours"]
    schema = validator(doc, "TurnCompletedEvent")
    for payload in payloads:
        assert payload is not None
        schema.validate(payload)
    assert not schema.is_valid(broken(payloads[1], ["data", "track"], 7))  # type: ignore[arg-type]
