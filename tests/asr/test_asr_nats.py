"""The ASR service through a real NATS server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.asr.caller import FakeCaller
from voiceplatform.audio import Int16Array
from voiceplatform.bus.nats import NatsBus
from vp_asr.app import AsrService
from vp_asr.settings import AsrSettings


@pytest.mark.slow
async def test_turn_over_real_nats(
    nats_url: str, nats_bus: NatsBus, robots_dir: Path, dog_speech: Int16Array
) -> None:
    instance = f"asr-nats-{uuid.uuid4().hex[:6]}"
    service = AsrService(AsrSettings(robots_dir=robots_dir, instance_id=instance))
    service_bus = await NatsBus.connect(nats_url, "asr")
    try:
        await service.start(service_bus)
        caller = FakeCaller(nats_bus)
        reply = await caller.assign()
        if reply.instance_id != instance:
            pytest.skip("another asr instance on this NATS server answered the assignment")
        assert reply.accepted
        ended = await caller.say("nats-1", dog_speech)
        final = await caller.next_final(wait_s=15)
        assert final.turn_id == "nats-1"
        assert final.speech_end_ts_ms == ended.ts_ms
        assert "собак" in final.text.lower()
        await caller.close()
    finally:
        await service.drain(2.0)
        await service_bus.close()
