"""End of turn in the VAD session on the in-memory bus, with an injected fake end-of-turn model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.vad.fakes import FakeEot
from tests.vad.helpers import Collector, chunks, collect, make_robot, silence, stream, tone
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import VadConfig
from voiceplatform.wire import AssignReply, AssignRequest, VadSpeechEnded, VadSpeechStarted
from voiceplatform.wire.messages import VadSpeechPaused, VadSpeechResumed
from vp_vad import app as vad_app
from vp_vad.app import VadService
from vp_vad.providers.energy import EnergyVad
from vp_vad.session import VadSession
from vp_vad.settings import VadSettings

RATE = 16000
# energy VAD, pause after 200 ms, short end 100 ms later, long end after 1000 ms in all
CFG = VadConfig(eot_model="smart_turn", pause_ms=200, eot_short_ms=100, eot_long_ms=1000)

Open = Callable[..., Awaitable[tuple[VadSession, Collector]]]


async def _noop(call_id: str) -> None:
    return None


@pytest.fixture
async def open_session(broker: MemoryBroker) -> AsyncIterator[Open]:
    sessions: list[VadSession] = []

    async def open_(call_id: str, eot: Any, cfg: VadConfig = CFG) -> tuple[VadSession, Collector]:
        bus = broker.bus("vad")
        events = await collect(broker.bus("gateway"), subjects.vad(call_id))
        session = VadSession(bus, call_id, RATE, cfg, EnergyVad(cfg.energy_threshold), _noop, eot=eot)
        await session.start()
        sessions.append(session)
        return session, events

    yield open_
    for s in sessions:
        await s.close("test_over")


async def feed(broker: MemoryBroker, session: VadSession, samples: np.ndarray, first_seq: int) -> int:
    """Stream frames and wait until the session has processed them; returns the next seq."""
    items = chunks(session.call_id, samples, RATE, first_seq=first_seq)
    await stream(broker.bus("gateway"), items)
    last = first_seq + len(items) - 1
    deadline = asyncio.get_running_loop().time() + 3
    while session._last_seq != last:
        assert asyncio.get_running_loop().time() < deadline, "frames not processed"
        await asyncio.sleep(0.005)
    return last + 1


async def pause_then(broker: MemoryBroker, session: VadSession, events: Collector) -> int:
    """1 s of tone at 0-1000 ms, then silence up to the pause; waits for the published pause."""
    seq = await feed(broker, session, np.concatenate([tone(RATE, 1000), silence(RATE, 200)]), 0)
    await events.wait(lambda: len(events.of(VadSpeechPaused)) == 1)
    return seq


async def silent_frames_until_end(
    broker: MemoryBroker, session: VadSession, events: Collector, seq: int
) -> int:
    """Silent frames after the pause, one by one, until the turn ends: how many it took."""
    for n in range(1, 200):
        seq = await feed(broker, session, silence(RATE, 20), seq)
        await asyncio.sleep(0)
        if events.of(VadSpeechEnded):
            return n
    raise AssertionError("turn never ended")


async def test_complete_utterance_gets_the_short_hang_over(broker: MemoryBroker, open_session: Open) -> None:
    session, events = await open_session("c-short", FakeEot(0.9))
    seq = await pause_then(broker, session, events)
    (paused,) = events.of(VadSpeechPaused)
    assert paused.audio_offset_ms == 1000 and paused.speech_ms == 1000 and paused.eot_probability == 0.9
    # the pause came after 10 silent frames; the short end 5 frames later (300 ms of silence in all)
    assert await silent_frames_until_end(broker, session, events, seq) == 5
    (ended,) = events.of(VadSpeechEnded)
    assert ended.audio_offset_ms == paused.audio_offset_ms and ended.eot_probability == 0.9
    assert ended.turn_id == paused.turn_id == events.of(VadSpeechStarted)[0].turn_id
    assert not ended.truncated


async def test_incomplete_utterance_gets_the_long_hang_over(broker: MemoryBroker, open_session: Open) -> None:
    session, events = await open_session("c-long", FakeEot(0.1))
    seq = await pause_then(broker, session, events)
    assert events.of(VadSpeechPaused)[0].eot_probability == 0.1
    assert await silent_frames_until_end(broker, session, events, seq) == 40  # 1000 ms in all
    assert events.of(VadSpeechEnded)[0].eot_probability == 0.1


async def test_model_gets_the_turns_audio_in_a_worker_thread(
    broker: MemoryBroker, open_session: Open
) -> None:
    fake = FakeEot(0.9)
    session, events = await open_session("c-audio", fake)
    await pause_then(broker, session, events)
    ((samples, rate),) = fake.calls
    assert rate == RATE and samples == RATE * 1200 // 1000  # the turn from its start to the pause
    assert threading.current_thread().name not in fake.threads
    assert all(name.startswith("vad-eot") for name in fake.threads)


async def test_resume_is_published_with_the_same_turn(broker: MemoryBroker, open_session: Open) -> None:
    session, events = await open_session("c-resume", FakeEot(0.2))
    seq = await pause_then(broker, session, events)
    seq = await feed(broker, session, np.concatenate([tone(RATE, 500), silence(RATE, 200)]), seq)
    await events.wait(lambda: len(events.of(VadSpeechPaused)) == 2)
    await silent_frames_until_end(broker, session, events, seq)
    kinds = [m.type_name for m in events.messages]
    assert kinds == [
        "vad.speech_started",
        "vad.speech_paused",
        "vad.speech_resumed",
        "vad.speech_paused",
        "vad.speech_ended",
    ]
    turn_ids = {m.turn_id for m in events.messages}  # type: ignore[attr-defined]
    assert len(turn_ids) == 1
    (resumed,) = events.of(VadSpeechResumed)
    assert resumed.audio_offset_ms == 1200
    assert (
        events.of(VadSpeechEnded)[0].audio_offset_ms == events.of(VadSpeechPaused)[1].audio_offset_ms == 1700
    )


async def test_pause_shorter_than_the_model_answer_is_not_published(
    broker: MemoryBroker, open_session: Open
) -> None:
    fake = FakeEot(0.9, delay_s=0.3)
    session, events = await open_session("c-stale", fake)
    seq = await feed(broker, session, np.concatenate([tone(RATE, 1000), silence(RATE, 220)]), 0)
    # speech comes back while the model still thinks
    seq = await feed(broker, session, tone(RATE, 400), seq)
    assert fake.running.is_set() or not fake.done.is_set()
    await asyncio.to_thread(fake.done.wait, 2)
    await asyncio.sleep(0.05)
    assert [m.type_name for m in events.messages] == ["vad.speech_started"]


async def test_failed_model_falls_back_to_silence_frames(broker: MemoryBroker, open_session: Open) -> None:
    before = REGISTRY.get_sample_value("vp_vad_eot_results_total", {"result": "error"}) or 0.0
    session, events = await open_session("c-fail", FakeEot(0.9, fail=True))
    seq = await pause_then(broker, session, events)
    assert events.of(VadSpeechPaused)[0].eot_probability == -1.0
    assert await silent_frames_until_end(broker, session, events, seq) == 15  # 25 silence frames
    assert REGISTRY.get_sample_value("vp_vad_eot_results_total", {"result": "error"}) == before + 1


async def test_slow_model_does_not_stall_another_calls_frames(
    broker: MemoryBroker, open_session: Open
) -> None:
    slow = FakeEot(0.9, delay_s=1.0)
    a, a_events = await open_session("c-slow", slow)
    b, b_events = await open_session("c-other", None)
    await feed(broker, a, np.concatenate([tone(RATE, 500), silence(RATE, 200)]), 0)
    await asyncio.to_thread(slow.running.wait, 2)
    # while A's model sleeps in the worker, B's whole utterance goes through
    await feed(broker, b, np.concatenate([tone(RATE, 500), silence(RATE, 600)]), 0)
    await b_events.wait(lambda: len(b_events.of(VadSpeechEnded)) == 1, within=0.5)
    assert slow.running.is_set(), "the slow model finished first: the test proved nothing"
    assert a_events.of(VadSpeechPaused) == []
    await a_events.wait(lambda: len(a_events.of(VadSpeechPaused)) == 1, within=3)


async def test_close_while_the_model_thinks_ends_the_turn_once(
    broker: MemoryBroker, open_session: Open
) -> None:
    fake = FakeEot(0.9, delay_s=0.2)
    session, events = await open_session("c-close", fake)
    await feed(broker, session, np.concatenate([tone(RATE, 500), silence(RATE, 220)]), 0)
    await session.close("call_ended")
    await asyncio.to_thread(fake.done.wait, 2)
    await asyncio.sleep(0.05)
    assert [m.type_name for m in events.messages] == [
        "vad.speech_started",
        "vad.speech_paused",
        "vad.speech_ended",
    ]
    assert (
        events.of(VadSpeechEnded)[0].audio_offset_ms == events.of(VadSpeechPaused)[0].audio_offset_ms == 500
    )


# ---- through the service: robot config, model injection, truncation ----------------------------


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def robots(tmp_path: Path) -> Path:
    make_robot(tmp_path, "plain", {"energy_threshold": 200})
    make_robot(tmp_path, "eot", {"energy_threshold": 200, "eot_model": "smart_turn"})
    make_robot(tmp_path, "capped", {"energy_threshold": 200, "max_turn_s": 1.0})
    return tmp_path


async def start_service(broker: MemoryBroker, robots: Path) -> VadService:
    settings = VadSettings(robots_dir=robots, instance_id="vad-t", preload_silero=False, preload_eot=False)
    service = VadService(settings)
    await service.start(broker.bus("vad"))
    return service


async def assign(broker: MemoryBroker, call_id: str, robot: str) -> None:
    reply = await broker.bus("gateway").request(
        subjects.assign("vad"), AssignRequest(call_id=call_id, role="vad", robot=robot, sample_rate=RATE)
    )
    assert isinstance(reply, AssignReply) and reply.accepted, reply


async def test_energy_robot_without_model_publishes_pause_at_once_and_ends_as_before(
    broker: MemoryBroker, robots: Path
) -> None:
    service = await start_service(broker, robots)
    try:
        events = await collect(broker.bus("gateway"), subjects.vad("s-plain"))
        await assign(broker, "s-plain", "plain")
        audio = np.concatenate([silence(RATE, 500), tone(RATE, 1000), silence(RATE, 700)])
        await stream(broker.bus("gateway"), chunks("s-plain", audio, RATE))
        await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)
        assert service.sessions["s-plain"].eot is None
        assert [m.type_name for m in events.messages] == [
            "vad.speech_started",
            "vad.speech_paused",
            "vad.speech_ended",
        ]
        paused, ended = events.of(VadSpeechPaused)[0], events.of(VadSpeechEnded)[0]
        assert paused.audio_offset_ms == ended.audio_offset_ms == 1500
        assert paused.eot_probability == ended.eot_probability == -1.0
    finally:
        await service.drain(1.0)


async def test_service_injects_the_robots_end_of_turn_model(
    broker: MemoryBroker, robots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEot(0.95)

    async def build(cfg: VadConfig, path: Path | None = None) -> FakeEot | None:
        return fake if cfg.eot_model == "smart_turn" else None

    monkeypatch.setattr(vad_app, "build_eot_model", build)
    service = await start_service(broker, robots)
    try:
        events = await collect(broker.bus("gateway"), subjects.vad("s-eot"))
        await assign(broker, "s-eot", "eot")
        audio = np.concatenate([silence(RATE, 500), tone(RATE, 1000), silence(RATE, 700)])
        await stream(broker.bus("gateway"), chunks("s-eot", audio, RATE))
        await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)
        assert service.sessions["s-eot"].eot is fake
        (ended,) = events.of(VadSpeechEnded)
        assert ended.eot_probability == 0.95 and ended.audio_offset_ms == 1500
    finally:
        await service.drain(1.0)


async def test_turn_longer_than_max_turn_is_truncated(broker: MemoryBroker, robots: Path) -> None:
    before = counter("vp_vad_turns_ended_total", reason="truncated")
    service = await start_service(broker, robots)
    try:
        events = await collect(broker.bus("gateway"), subjects.vad("s-cap"))
        await assign(broker, "s-cap", "capped")
        await stream(broker.bus("gateway"), chunks("s-cap", tone(RATE, 1500), RATE))
        await events.wait(lambda: len(events.of(VadSpeechEnded)) == 1)
        (ended,) = events.of(VadSpeechEnded)
        assert ended.truncated and ended.audio_offset_ms == 1000 and ended.speech_ms == 1000
        assert counter("vp_vad_turns_ended_total", reason="truncated") == before + 1
        # the caller goes on talking: that is a new turn
        await events.wait(lambda: len(events.of(VadSpeechStarted)) == 2)
        assert events.of(VadSpeechStarted)[1].audio_offset_ms == 1000
    finally:
        await service.drain(1.0)
