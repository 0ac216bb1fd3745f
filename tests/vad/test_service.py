"""The VAD service on the in-memory broker (and once on real NATS): assignment, events, drops, drain."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.vad.helpers import Pcm, chunks, collect, make_robot, silence, stream, tone
from voiceplatform import subjects
from voiceplatform.bus import Bus, NoResponders
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.runtime import sessions as owned_sessions
from voiceplatform.wire import (
    AssignReply,
    AssignRequest,
    AudioChunk,
    CallEnded,
    OwnerReleased,
    VadSpeechEnded,
    VadSpeechStarted,
)
from vp_vad.app import VadService
from vp_vad.settings import VadSettings

StartService = Callable[..., Awaitable[VadService]]


@pytest.fixture
def robots_dir(tmp_path: Path) -> Path:
    make_robot(tmp_path, "energy_bot", {"enabled": True, "energy_threshold": 200})
    make_robot(tmp_path, "off_bot", {"enabled": False})
    return tmp_path


@pytest.fixture
async def start_service(broker: MemoryBroker, robots_dir: Path) -> AsyncIterator[StartService]:
    started: list[VadService] = []

    async def start(
        instance_id: str, max_calls: int = 50, bus: Bus | None = None, **extra: Any
    ) -> VadService:
        settings = VadSettings(
            robots_dir=robots_dir,
            instance_id=instance_id,
            max_calls=max_calls,
            preload_silero=False,
            **extra,
        )
        service = VadService(settings)
        await service.start(bus or broker.bus("vad"))
        started.append(service)
        return service

    yield start
    for service in started:
        await service.drain(1.0)


def utterance(rate: int) -> Pcm:
    """Speech at 500–1500 ms, then enough silence for the end to be confirmed."""
    return np.concatenate([silence(rate, 500), tone(rate, 1000), silence(rate, 700)])


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def dropped(reason: str) -> float:
    return counter("vp_messages_dropped_total", service="vad", stage="audio.in", reason=reason)


async def assign(bus: Bus, call_id: str, robot: str = "energy_bot", rate: int = 16000) -> AssignReply:
    reply = await bus.request(
        subjects.assign("vad"), AssignRequest(call_id=call_id, role="vad", robot=robot, sample_rate=rate)
    )
    assert isinstance(reply, AssignReply)
    return reply


async def assign_retrying(bus: Bus, call_id: str, attempts: int = 20) -> AssignReply:
    """What a gateway does: ask again while instances reject."""
    for _ in range(attempts):
        reply = await assign(bus, call_id)
        if reply.accepted:
            return reply
    raise AssertionError(f"{call_id} never accepted")


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_assigned_call_gets_started_and_ended(
    broker: MemoryBroker, start_service: StartService, rate: int
) -> None:
    service = await start_service("vad-a")
    client = broker.bus("gateway")
    events = await collect(client, subjects.vad("call-1"))
    frames_before = counter("vp_audio_frames_in_total", service="vad")
    timed_before = counter("vp_vad_frame_processing_ms_count", provider="energy")

    reply = await assign(client, "call-1", rate=rate)
    assert reply.accepted and reply.instance_id == "vad-a"
    assert service.ownership.calls == {"call-1"} and set(service.sessions) == {"call-1"}
    audio = chunks("call-1", utterance(rate), rate)
    await stream(client, audio)
    await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)

    (started,) = events.of(VadSpeechStarted)
    (ended,) = events.of(VadSpeechEnded)
    assert re.fullmatch(r"call-1-t1-[0-9a-f]{4}", started.turn_id)
    assert ended.turn_id == started.turn_id
    assert started.audio_offset_ms == 500
    assert ended.audio_offset_ms == 1500 and ended.speech_ms == 1000
    assert counter("vp_audio_frames_in_total", service="vad") - frames_before == len(audio)
    assert counter("vp_vad_frame_processing_ms_count", provider="energy") - timed_before == len(audio)

    # the next utterance (offsets continue with seq) is a new turn
    await stream(client, chunks("call-1", utterance(rate), rate, first_seq=len(audio)))
    await events.wait(lambda: len(events.of(VadSpeechEnded)) == 2)
    second = events.of(VadSpeechStarted)[1]
    assert second.turn_id.startswith("call-1-t2-") and second.turn_id != started.turn_id
    assert second.audio_offset_ms == len(audio) * 20 + 500


async def test_bad_frames_are_dropped_and_counted_while_the_call_goes_on(
    broker: MemoryBroker, start_service: StartService
) -> None:
    service = await start_service("vad-a")
    client = broker.bus("gateway")
    events = await collect(client, subjects.vad("call-2"))
    assert (await assign(client, "call-2", rate=8000)).accepted
    before = {r: dropped(r) for r in ("wrong_frame_size", "wrong_sample_rate", "not_msgpack", "out_of_order")}

    good = chunks("call-2", utterance(8000), 8000)
    subject = subjects.audio_in("call-2")
    await stream(client, good[:10])
    await client.publish(subject, AudioChunk(call_id="call-2", seq=10, sample_rate=8000, pcm=b"\x01" * 100))
    await client.publish(subject, AudioChunk(call_id="call-2", seq=11, sample_rate=16000, pcm=b"\x00" * 640))
    await client.publish_bytes(subject, b"\xc1garbage, not msgpack")
    await client.publish(subject, good[3])  # a repeated, stale frame
    await stream(client, good[12:])  # seq 10 and 11 were dropped: a gap of two frames
    await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)

    assert events.of(VadSpeechStarted)[0].audio_offset_ms == 500
    assert events.of(VadSpeechEnded)[0].audio_offset_ms == 1500
    for reason in before:
        assert dropped(reason) - before[reason] == 1, reason
    session = service.sessions["call-2"]
    assert session.dropped == 3 and session.frames == len(good) - 2
    # the same problem again is counted again (the log line is only written once)
    await client.publish(subject, AudioChunk(call_id="call-2", seq=10_000, sample_rate=8000, pcm=b""))
    await events.wait(lambda: session.dropped == 4)
    assert dropped("wrong_frame_size") - before["wrong_frame_size"] == 2


async def test_two_instances_each_call_has_exactly_one_owner(
    broker: MemoryBroker, start_service: StartService
) -> None:
    a = await start_service("vad-a", max_calls=1)
    b = await start_service("vad-b", max_calls=1)
    client = broker.bus("gateway")
    owners = {}
    collectors = {}
    for call_id in ("call-x", "call-y"):
        collectors[call_id] = await collect(client, subjects.vad(call_id))
        owners[call_id] = (await assign_retrying(client, call_id)).instance_id
    assert sorted(owners.values()) == ["vad-a", "vad-b"]
    assert set(a.sessions) | set(b.sessions) == {"call-x", "call-y"}
    assert not set(a.sessions) & set(b.sessions)

    for call_id in owners:
        await stream(client, chunks(call_id, utterance(16000), 16000))
    for c in collectors.values():
        await c.wait(partial(lambda col: len(col.of(VadSpeechEnded)) == 1, c))
    await asyncio.sleep(0.05)  # a second owner, if any, would have published by now
    for c in collectors.values():
        assert len(c.of(VadSpeechStarted)) == 1 and len(c.of(VadSpeechEnded)) == 1

    # both full: the next call is rejected by whichever instance answers
    reply = await assign(client, "call-z")
    assert not reply.accepted and reply.reason == "at_capacity"


async def test_disabled_vad_accepts_but_never_emits(
    broker: MemoryBroker, start_service: StartService
) -> None:
    service = await start_service("vad-a")
    client = broker.bus("gateway")
    events = await collect(client, subjects.vad("call-off"))
    assert (await assign(client, "call-off", robot="off_bot")).accepted
    audio = chunks("call-off", utterance(16000), 16000)
    await stream(client, audio)
    session = service.sessions["call-off"]
    await events.wait(lambda: session._last_seq == len(audio) - 1)
    assert events.messages == []
    assert service.ownership.calls == {"call-off"}


async def test_bad_assignments_are_rejected(broker: MemoryBroker, start_service: StartService) -> None:
    service = await start_service("vad-a")
    client = broker.bus("gateway")
    unknown = await assign(client, "call-u", robot="no_such_robot")
    assert not unknown.accepted and unknown.reason == "error:RobotConfigError"
    odd_rate = await assign(client, "call-r", rate=44100)
    assert not odd_rate.accepted and odd_rate.reason == "error:ValueError"
    assert service.sessions == {} and service.ownership.calls == set()


async def test_call_ended_closes_the_session_and_ends_open_speech(
    broker: MemoryBroker, start_service: StartService
) -> None:
    service = await start_service("vad-a")
    client = broker.bus("gateway")
    events = await collect(client, subjects.vad("call-e"))
    assert (await assign(client, "call-e")).accepted
    audio = chunks("call-e", np.concatenate([silence(16000, 200), tone(16000, 600)]), 16000)
    await stream(client, audio)
    await events.wait(lambda: len(events.of(VadSpeechStarted)) == 1)
    await client.publish(subjects.lifecycle("call-e"), CallEnded(call_id="call-e", reason="hangup"))
    await events.wait(lambda: "call-e" not in service.sessions and "call-e" not in service.ownership.calls)

    (ended,) = events.of(VadSpeechEnded)
    assert ended.turn_id == events.of(VadSpeechStarted)[0].turn_id
    assert ended.audio_offset_ms == 800 and ended.speech_ms == 600
    await stream(client, chunks("call-e", utterance(16000), 16000, first_seq=len(audio)))
    await asyncio.sleep(0.1)
    assert len(events.messages) == 2


async def test_drain_releases_calls_and_stops_accepting(
    broker: MemoryBroker, start_service: StartService
) -> None:
    a = await start_service("vad-a", max_calls=1)
    b = await start_service("vad-b", max_calls=1)
    client = broker.bus("gateway")
    released = await collect(client, subjects.released("vad"))
    owner_id = (await assign_retrying(client, "call-d")).instance_id
    owner, other = (a, b) if owner_id == "vad-a" else (b, a)

    await owner.drain(1.0)
    await released.wait(lambda: len(released.messages) == 1)
    (msg,) = released.of(OwnerReleased)
    assert msg.call_id == "call-d" and msg.instance_id == owner_id and msg.role == "vad"
    assert owner.sessions == {} and not owner.ready()

    # the gateway re-assigns: only the other instance answers now
    for _ in range(5):
        reply = await assign(client, "call-d")
        assert reply.accepted and reply.instance_id == other.settings.instance_id
    await other.drain(1.0)
    with pytest.raises(NoResponders):
        await assign(client, "call-n")


async def test_idle_call_is_dropped(
    broker: MemoryBroker, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owned_sessions, "IDLE_CHECK_INTERVAL_S", 0.05)
    service = await start_service("vad-a", idle_timeout_s=0.2)
    client = broker.bus("gateway")
    assert (await assign(client, "call-i")).accepted
    await stream(client, chunks("call-i", silence(16000, 100), 16000))
    await asyncio.sleep(0.1)
    assert "call-i" in service.sessions
    never = await collect(client, subjects.vad("call-i"))
    await never.wait(lambda: not service.sessions and not service.ownership.calls, within=2)


async def test_over_real_nats(nats_url: str, nats_bus: Bus, start_service: StartService) -> None:
    service_bus = await NatsBus.connect(nats_url, "vad")
    try:
        service = await start_service(f"vad-nats-{uuid.uuid4().hex[:6]}", bus=service_bus)
        call_id = f"nats-{uuid.uuid4().hex[:8]}"
        events = await collect(nats_bus, subjects.vad(call_id))
        reply = await assign(nats_bus, call_id, rate=8000)
        assert reply.accepted and reply.instance_id == service.settings.instance_id
        await stream(nats_bus, chunks(call_id, utterance(8000), 8000))
        await nats_bus.publish_bytes(subjects.audio_in(call_id), b"\xc1 not msgpack")
        await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1, within=5)
        (started,) = events.of(VadSpeechStarted)
        (ended,) = events.of(VadSpeechEnded)
        assert started.audio_offset_ms == 500 and ended.audio_offset_ms == 1500
        assert ended.turn_id == started.turn_id
        await service.drain(1.0)
    finally:
        await service_bus.close()


def packed(call_id: str, samples: Pcm, rate: int, per_message: int) -> list[AudioChunk]:
    """The frames of ``samples`` as v2 chunks of ``per_message`` frames (what a gateway set to send
    fewer messages publishes)."""
    single = chunks(call_id, samples, rate)
    return [
        AudioChunk(
            call_id=call_id,
            seq=single[i].seq,
            sample_rate=rate,
            pcm=b"".join(c.pcm for c in single[i : i + per_message]),
            v=2,
        )
        for i in range(0, len(single), per_message)
    ]


async def test_chunks_of_several_frames_give_the_same_turns_as_single_frames(
    broker: MemoryBroker, start_service: StartService
) -> None:
    service = await start_service("vad-a")
    client = broker.bus("gateway")
    events = await collect(client, subjects.vad("call-v2"))
    frames_before = counter("vp_audio_frames_in_total", service="vad")
    assert (await assign(client, "call-v2", rate=8000)).accepted

    audio = packed("call-v2", utterance(8000), 8000, per_message=3)
    await stream(client, audio)
    await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)

    (started,) = events.of(VadSpeechStarted)
    (ended,) = events.of(VadSpeechEnded)
    assert started.audio_offset_ms == 500  # offsets by frame, not by message
    assert ended.audio_offset_ms == 1500 and ended.speech_ms == 1000
    assert counter("vp_audio_frames_in_total", service="vad") - frames_before == len(utterance(8000)) // 160
    # a chunk that starts at a frame already fed (a replay carried it) gives its new frame only
    session = service.sessions["call-v2"]
    fed, last = session.frames, len(utterance(8000)) // 160 - 1
    straddling = AudioChunk(call_id="call-v2", seq=last, sample_rate=8000, pcm=b"\0" * 640, v=2)
    await client.publish(subjects.audio_in("call-v2"), straddling)
    await events.wait(lambda: session.frames == fed + 1)
    assert session.dropped == 0
    # a v1 message may hold one frame only: two are dropped as the wrong size
    bad = AudioChunk(call_id="call-v2", seq=10_000, sample_rate=8000, pcm=b"\0" * 640)
    await client.publish(subjects.audio_in("call-v2"), bad)
    await events.wait(lambda: session.dropped == 1)
