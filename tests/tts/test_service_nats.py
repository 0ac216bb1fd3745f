"""The TTS service over a real NATS server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.tts.conftest import ROBOT, TEST_PROVIDERS
from tests.tts.helpers import CallOutput, sentence
from tests.tts.stand_in_providers import SlowTts
from voiceplatform import subjects
from voiceplatform.audio import pcm_to_array, rms
from voiceplatform.bus import Bus
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import ControlInterrupt
from vp_tts.app import TtsService
from vp_tts.settings import TtsSettings


@pytest.fixture
async def nats_service(nats_url: str, settings: TtsSettings) -> AsyncIterator[TtsService]:
    bus = await NatsBus.connect(nats_url, "tts")
    service = TtsService(settings, registry=TEST_PROVIDERS)
    await service.start(bus)
    try:
        yield service
    finally:
        await service.drain(2.0)
        await bus.close()


@pytest.mark.slow
async def test_sentence_and_interrupt_over_nats(nats_service: TtsService, nats_bus: Bus) -> None:
    call_id = f"tts-nats-{uuid.uuid4().hex[:8]}"
    out = await CallOutput.on(nats_bus, call_id)
    await asyncio.sleep(0.05)  # our subscriptions reach the server before the first publish

    await nats_bus.publish(
        subjects.llm_sentence(call_id), sentence(call_id, "t1", 0, "Добрый день! Слушаю вас.", ROBOT, 8000)
    )
    await out.wait_closed(0)
    chunks = out.chunks(0)
    assert [c.seq for c in chunks] == list(range(len(chunks))) and chunks[-1].last
    assert {c.sample_rate for c in chunks} == {8000} and {c.provider for c in chunks} == {"festival"}
    assert rms(pcm_to_array(out.pcm(0))) > 300

    closed = SlowTts.closed
    await nats_bus.publish(subjects.llm_sentence(call_id), sentence(call_id, "t2", 0, "Долго.", "slow_bot"))
    await out.wait_until(lambda: len(out.chunks(0, "t2")) >= 2)
    await nats_bus.publish(subjects.control(call_id), ControlInterrupt(call_id=call_id, turn_id="t2"))
    await out.wait_until(lambda: SlowTts.closed == closed + 1, timeout_s=3.0)
    heard = len(out.chunks(0, "t2"))
    await asyncio.sleep(0.3)
    assert len(out.chunks(0, "t2")) == heard < SlowTts.chunks
