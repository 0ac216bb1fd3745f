"""The ASR service on the in-memory bus: assignment, VAD-bounded segments, finals, errors, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.asr.caller import FakeCaller
from tests.asr.local import LocalAsr
from voiceplatform import subjects
from voiceplatform.audio import Int16Array, resample
from voiceplatform.bus import Envelope, NoResponders
from voiceplatform.bus.memory import MemoryBroker, MemoryBus
from voiceplatform.config import AsrConfig
from voiceplatform.providers import ProviderRegistry, ProviderTimeoutError, Transcript
from voiceplatform.wire import OwnerReleased
from vp_asr.app import AsrService
from vp_asr.providers import whisper_model
from vp_asr.settings import AsrSettings

pytestmark = pytest.mark.slow  # the service preloads the real whisper model


class FailingAsr(LocalAsr):
    """A provider whose backend always times out (as a cloud ASR would)."""

    name = "failing"
    sample_rates = (8000, 16000)

    def __init__(self, config: AsrConfig) -> None:
        self.config = config

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        async for _ in audio:
            pass
        raise ProviderTimeoutError(self.name)
        yield Transcript("", True)  # pragma: no cover - makes this an async generator


PROVIDERS = ProviderRegistry(
    "asr",
    {"whisper": "vp_asr.providers.whisper:WhisperAsr", "failing": "tests.asr.test_asr_service:FailingAsr"},
)


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def asr(broker: MemoryBroker, robots_dir: Path) -> AsyncIterator[AsrService]:
    settings = AsrSettings(robots_dir=robots_dir, instance_id="asr-test-1", drain_timeout_s=5)
    service = AsrService(settings, providers=PROVIDERS)
    assert not service.ready()
    await service.start(broker.bus("asr"))
    yield service
    await service.drain(2.0)


async def test_recognizes_a_turn_and_carries_its_ids(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    assert asr.ready() and asr.health()["model_loaded"] is True
    caller = FakeCaller(gateway_bus)
    reply = await caller.assign()
    assert reply.accepted and reply.instance_id == "asr-test-1"

    ended = await caller.say("turn-1", dog_speech)
    final = await caller.next_final()
    assert final.turn_id == "turn-1"
    assert final.call_id == caller.call_id
    assert "собак" in final.text.lower()
    assert final.speech_end_ts_ms == ended.ts_ms
    assert final.provider == "whisper" and final.language == "ru"
    speech_ms = len(dog_speech) * 1000 // 16000
    assert speech_ms <= final.audio_ms <= speech_ms + 400  # + pre-roll, minus nothing
    assert 0 < final.processing_ms < 10_000


async def test_waits_for_frames_that_arrive_after_speech_ended(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    """At 8 kHz; speech_ended overtakes the last 900 ms of the word 'собака' plus trailing silence."""
    caller = FakeCaller(gateway_bus, sample_rate=8000)
    assert (await caller.assign()).accepted
    speech = resample(dog_speech, 16000, 8000)
    head, tail = speech[:-7200], speech[-7200:]
    await caller.send(caller.silence(300))
    start = caller.offset_ms
    await caller.speech_started("late-1", start + 100)
    await caller.send(head)
    end = caller.offset_ms + 900
    await caller.speech_ended("late-1", end, end - start)
    await asyncio.sleep(0.05)
    await caller.send(tail)
    await caller.send(caller.silence(200))
    final = await caller.next_final()
    assert final.turn_id == "late-1"
    assert "собак" in final.text.lower()


async def test_too_short_segment_gives_empty_text_without_the_model(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    caller = FakeCaller(gateway_bus)
    assert (await caller.assign()).accepted
    inferences = _metric("vp_asr_inference_ms_count", {"provider": "whisper"})
    await caller.send(caller.silence(200))
    start = caller.offset_ms
    await caller.speech_started("short-1", start)
    await caller.send(dog_speech[:1600])  # 100 ms
    sent = time.monotonic()
    await caller.speech_ended("short-1", caller.offset_ms, 100)
    final = await caller.next_final(wait_s=2.0)
    assert time.monotonic() - sent < 0.3
    assert (final.turn_id, final.text) == ("short-1", "")
    assert _metric("vp_asr_inference_ms_count", {"provider": "whisper"}) == inferences


async def test_garbage_frames_are_dropped_and_counted(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    caller = FakeCaller(gateway_bus)
    assert (await caller.assign()).accepted
    labels = {"service": "asr", "stage": "audio.in"}
    size_before = _metric("vp_messages_dropped_total", {**labels, "reason": "wrong_frame_size"})
    rate_before = _metric("vp_messages_dropped_total", {**labels, "reason": "wrong_sample_rate"})
    await caller.send_frame(b"\x01\x02\x03")
    await caller.send_frame(b"\x00" * 320, sample_rate=8000)
    await caller.send_frame(b"\x00" * 641)
    await caller.bus.publish_bytes(subjects.audio_in(caller.call_id), b"\xc1 not msgpack")
    await caller.say("after-garbage", dog_speech)
    final = await caller.next_final()
    assert "собак" in final.text.lower(), "the call goes on after bad frames"
    assert _metric("vp_messages_dropped_total", {**labels, "reason": "wrong_frame_size"}) == size_before + 2
    assert _metric("vp_messages_dropped_total", {**labels, "reason": "wrong_sample_rate"}) == rate_before + 1


async def test_two_calls_share_one_model(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array, price_speech: Int16Array
) -> None:
    loads_before = whisper_model.model_load_count()
    first, second = FakeCaller(gateway_bus), FakeCaller(gateway_bus, sample_rate=8000)
    assert (await first.assign()).accepted and (await second.assign()).accepted
    await asyncio.gather(first.say("a-1", dog_speech), second.say("b-1", resample(price_speech, 16000, 8000)))
    final_a, final_b = await asyncio.gather(first.next_final(), second.next_final())
    assert "собак" in final_a.text.lower()
    assert "стоит" in final_b.text.lower()
    assert whisper_model.model_load_count() == loads_before == 1
    assert asr.health()["calls"] == 2


async def test_unknown_provider_reports_a_stage_error_and_the_call_goes_on(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    caller = FakeCaller(gateway_bus, robot="ghostbot")
    assert (await caller.assign()).accepted
    error = await caller.next_error()
    assert (error.stage, error.kind) == ("asr", "provider_unavailable")
    assert "nosuch" in error.detail
    await caller.say("ghost-1", dog_speech[:16000])
    turn_error = await caller.next_error()
    assert turn_error.turn_id == "ghost-1"


async def test_provider_failure_publishes_stage_error_and_counts_it(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    caller = FakeCaller(gateway_bus, robot="failbot")
    assert (await caller.assign()).accepted
    before = _metric("vp_provider_errors_total", {"service": "asr", "provider": "failing", "kind": "timeout"})
    await caller.say("fail-1", dog_speech[:16000])
    error = await caller.next_error()
    assert (error.stage, error.kind, error.turn_id, error.retryable) == ("asr", "timeout", "fail-1", True)
    after = _metric("vp_provider_errors_total", {"service": "asr", "provider": "failing", "kind": "timeout"})
    assert after == before + 1
    await caller.say("fail-2", dog_speech[:16000])
    assert (await caller.next_error()).turn_id == "fail-2", "the session survives provider failures"


async def test_call_ended_closes_the_session_and_discards_in_flight_work(
    asr: AsrService, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    caller = FakeCaller(gateway_bus)
    assert (await caller.assign()).accepted
    await caller.say("bye-1", dog_speech)
    await asyncio.sleep(0.2)  # recognition is now running
    await caller.hang_up()
    for _ in range(100):
        if caller.call_id not in asr.sessions:
            break
        await asyncio.sleep(0.01)
    assert caller.call_id not in asr.sessions
    assert asr.ownership is not None and caller.call_id not in asr.ownership.calls
    with pytest.raises(TimeoutError):
        await caller.next_final(wait_s=1.5)


async def test_drain_finishes_in_flight_turns_then_releases_calls(
    broker: MemoryBroker, robots_dir: Path, gateway_bus: MemoryBus, dog_speech: Int16Array
) -> None:
    settings = AsrSettings(robots_dir=robots_dir, instance_id="asr-drain")
    service = AsrService(settings, providers=PROVIDERS)
    await service.start(broker.bus("asr"))
    released: list[OwnerReleased] = []

    async def on_released(env: Envelope) -> None:
        if isinstance(env.message, OwnerReleased):
            released.append(env.message)

    await gateway_bus.subscribe(subjects.released("asr"), on_released)
    caller = FakeCaller(gateway_bus)
    assert (await caller.assign()).accepted
    await caller.say("drain-1", dog_speech)
    await asyncio.sleep(0.05)
    await service.drain(30.0)  # returns as soon as the turn is done; generous for a loaded CI box
    final = await caller.next_final(wait_s=1.0)  # published before drain returned
    assert final.turn_id == "drain-1" and "собак" in final.text.lower()
    await asyncio.sleep(0.05)
    assert [r.call_id for r in released] == [caller.call_id]
    assert not service.sessions and not service.ready()
    late = FakeCaller(gateway_bus)
    with pytest.raises(NoResponders):
        await late.assign(retries=0)


async def test_rolling_buffer_keeps_only_the_window(broker: MemoryBroker) -> None:
    """Frames older than buffer_ms are evicted; a segment reaching behind the window is cut at it."""
    from voiceplatform.runtime import TaskRegistry
    from vp_asr.session import AsrSession, SessionOptions

    session = AsrSession(
        broker.bus("asr"),
        "buffer-call",
        SessionOptions(sample_rate=8000, buffer_ms=10_000),
        None,
        TaskRegistry(),
        lambda _: None,
    )
    await session.open()
    caller = FakeCaller(broker.bus("gateway"), sample_rate=8000)
    caller.call_id = "buffer-call"
    for seq in range(800):  # 16 s of frames, each filled with its own seq number
        await caller.send_frame(np.full(160, seq % 30000, dtype=np.int16).tobytes())
    await asyncio.sleep(0.05)
    pcm = session._cut(0, 16_000)
    assert len(pcm) == 500 * 320, "10 s window at 8 kHz"
    assert np.frombuffer(pcm[:320], dtype=np.int16)[0] == 300
    assert np.frombuffer(pcm[-320:], dtype=np.int16)[0] == 799
    await session.close()
