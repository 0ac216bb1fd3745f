"""Cloud voices in the TTS service: built per robot, and failed over on errors and on silence."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.stand_ins.elevenlabs_server import VALID_KEY, ElevenLabsStandIn
from tests.tts.helpers import CallOutput, sentence
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from vp_tts.app import TtsService
from vp_tts.settings import TtsSettings

VOICE = "21m00Tcm4TlvDq8ikWAM"


@pytest.fixture
async def eleven() -> AsyncIterator[ElevenLabsStandIn]:
    async with ElevenLabsStandIn() as stand_in:
        yield stand_in


def write_cloud_robot(robots: Path, name: str, base_url: str, key: str, **tts: Any) -> None:
    folder = robots / name
    folder.mkdir(parents=True)
    options = {"base_url": base_url, "stall_timeout_s": 30.0}
    config = {
        "llm": {"provider": "openai"},
        "tts": {
            "provider": "elevenlabs",
            "voice": VOICE,
            "fallback": ["espeak"],
            "providers": {"elevenlabs": options},
            **tts,
        },
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / ".env").write_text(f"TTS_API_KEY={key}\n", encoding="utf-8")


@pytest.fixture
async def service(
    broker: MemoryBroker, tmp_path: Path, eleven: ElevenLabsStandIn
) -> AsyncIterator[TtsService]:
    robots = tmp_path / "robots"
    write_cloud_robot(robots, "cloud", eleven.base_url, VALID_KEY, first_audio_timeout_s=0.5)
    write_cloud_robot(robots, "bad_key", eleven.base_url, "xi-wrong-key")
    settings = TtsSettings(robots_dir=robots, festival_procs=1)
    svc = TtsService(settings)
    await svc.start(broker.bus("tts"))
    yield svc
    await svc.drain(2.0)


async def speak(broker: MemoryBroker, robot: str, call_id: str) -> CallOutput:
    client = broker.bus("llm")
    out = await CallOutput.on(client, call_id)
    await client.publish(subjects.llm_sentence(call_id), sentence(call_id, "t1", 0, "Добрый день.", robot))
    await out.wait_closed(0)
    return out


async def test_cloud_voice_speaks_with_the_robots_own_key(
    broker: MemoryBroker, service: TtsService, eleven: ElevenLabsStandIn
) -> None:
    out = await speak(broker, "cloud", "c1")
    assert {c.provider for c in out.chunks(0)} == {"elevenlabs"}
    assert len(out.pcm(0)) > 0
    assert [r.headers.get("xi-api-key") for r in eleven.recorded.streams] == [VALID_KEY]


async def test_a_stream_that_stays_silent_fails_over_before_anything_is_heard(
    broker: MemoryBroker, service: TtsService, eleven: ElevenLabsStandIn
) -> None:
    eleven.behavior.stall_after = 0  # the connection opens, no audio ever comes
    started = time.monotonic()
    out = await speak(broker, "cloud", "c2")
    elapsed = time.monotonic() - started
    assert {c.provider for c in out.chunks(0)} == {"espeak"}  # the caller hears the fallback voice
    assert len(out.pcm(0)) > 0
    assert elapsed < 3.0  # the robot's 0.5 s deadline, not the provider's own 30 s stall timeout
    await asyncio.wait_for(eleven.recorded.client_closed.wait(), 2.0)  # closed, not left hanging


async def test_a_rejected_key_fails_over_to_the_next_voice(broker: MemoryBroker, service: TtsService) -> None:
    out = await speak(broker, "bad_key", "c3")
    assert {c.provider for c in out.chunks(0)} == {"espeak"}
