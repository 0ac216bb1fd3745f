"""RHVoice as the default voice of the TTS service: call rates, fallback to festival, robot reuse."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import voiceplatform.config.robot as robot_module
from tests.tts.conftest import TEST_PROVIDERS, write_robot
from tests.tts.helpers import CallOutput, sentence
from tests.tts.rhvoice_fixtures import require_engine
from voiceplatform import subjects
from voiceplatform.audio import pcm_to_array, rms
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import TtsConfig
from vp_tts.app import TtsService
from vp_tts.settings import TtsSettings

TEXT = "Ваш заказ на 1 200 ₽ приедет 06.12.2026 — «Ромашка» ждёт вас!"
StartService = Callable[..., Awaitable[TtsService]]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def start_service(broker: MemoryBroker, settings: TtsSettings) -> AsyncIterator[StartService]:
    services: list[TtsService] = []

    async def start(**overrides: object) -> TtsService:
        service = TtsService(settings.model_copy(update=overrides), registry=TEST_PROVIDERS)
        await service.start(broker.bus(f"tts-{len(services)}"))
        services.append(service)
        return service

    yield start
    for service in services:
        await service.drain(2.0)


async def speak(broker: MemoryBroker, call_id: str, robot: str, rate: int, index: int = 0) -> CallOutput:
    client = broker.bus(f"llm-{call_id}-{index}")
    out = await CallOutput.on(client, call_id)
    await client.publish(subjects.llm_sentence(call_id), sentence(call_id, "t1", index, TEXT, robot, rate))
    await out.wait_closed(index)
    return out


def test_rhvoice_is_the_default_with_local_fallbacks() -> None:
    assert TtsConfig().provider == "rhvoice"
    assert TtsConfig().fallback == ["festival", "espeak"]
    # an explicit chain is the robot's own choice
    assert TtsConfig(provider="rhvoice", fallback=[]).fallback == []
    assert TtsConfig(provider="yandex").fallback == []


async def test_default_robot_speaks_rhvoice_at_the_call_rate(
    broker: MemoryBroker, start_service: StartService, settings: TtsSettings, robots_dir: Path
) -> None:
    require_engine(settings)
    write_robot(robots_dir, "default_bot", {})  # no tts provider named: the default chain
    service = await start_service()
    assert service.health()["rhvoice"]["available"]
    web = await speak(broker, "web", "default_bot", 16000)
    phone = await speak(broker, "phone", "default_bot", 8000)
    for out, rate in ((web, 16000), (phone, 8000)):
        chunks = out.chunks(0)
        assert len(chunks) > 10 and {c.provider for c in chunks} == {"rhvoice"}
        assert {c.sample_rate for c in chunks} == {rate}
        assert rms(pcm_to_array(out.pcm(0))) > 300
    # the same speech, resampled from 24 kHz to each call's rate
    assert abs(len(phone.pcm(0)) * 2 - len(web.pcm(0))) <= 4


async def test_missing_library_falls_through_to_festival(
    broker: MemoryBroker, start_service: StartService, robots_dir: Path
) -> None:
    write_robot(robots_dir, "default_bot", {})
    before = metric("vp_tts_fallbacks_total", from_provider="rhvoice", to_provider="festival")
    service = await start_service(rhvoice_library="libRHVoice-missing.so.0")
    assert service.ready()  # festival is warm: the instance takes sentences
    assert "cannot load libRHVoice-missing.so.0" in service.health()["rhvoice"]["reason"]
    out = await speak(broker, "phone", "default_bot", 8000)
    assert {c.provider for c in out.chunks(0)} == {"festival"} and not out.errors
    assert metric("vp_tts_fallbacks_total", from_provider="rhvoice", to_provider="festival") == before + 1


async def test_unknown_voice_falls_through_to_festival(
    broker: MemoryBroker, start_service: StartService, settings: TtsSettings, robots_dir: Path
) -> None:
    require_engine(settings)
    write_robot(robots_dir, "typo_bot", {"providers": {"rhvoice": {"voice": "Irena"}}})
    before = metric("vp_provider_errors_total", service="tts", provider="rhvoice", kind="error")
    await start_service()
    out = await speak(broker, "web", "typo_bot", 16000)
    assert {c.provider for c in out.chunks(0)} == {"festival"}
    assert metric("vp_provider_errors_total", service="tts", provider="rhvoice", kind="error") == before + 1


async def test_robot_config_is_loaded_once_and_reloaded_when_its_folder_changes(
    broker: MemoryBroker,
    start_service: StartService,
    robots_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_robot(robots_dir, "espeak_only", {"provider": "espeak"})
    loads: list[str] = []
    real_load = robot_module.load_robot

    def counting_load(path: Path | str, root_env: Path | None = None) -> robot_module.RobotConfig:
        loads.append(Path(path).name)
        return real_load(path, root_env)

    monkeypatch.setattr(robot_module, "load_robot", counting_load)
    await start_service(festival_preload=False, rhvoice_preload=False)
    for index in range(3):
        await speak(broker, "web", "espeak_only", 16000, index)
    assert loads == ["espeak_only"]
    # a new .env in the robot's folder changes what the robot loads: the next sentence reloads it
    folder = robots_dir / "espeak_only"
    (folder / ".env").write_text("ROBOT_TTS__FIRST_AUDIO_TIMEOUT_S=5\n")
    stamp = folder.stat().st_mtime + 5
    os.utime(folder, (stamp, stamp))
    await speak(broker, "web", "espeak_only", 16000, 3)
    assert loads == ["espeak_only", "espeak_only"]
