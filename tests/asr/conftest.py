"""ASR test fixtures: temporary robots, Festival utterances cached for the session, a running service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.audio_fixtures import festival_available, festival_wav
from voiceplatform.audio import Int16Array, read_wav
from voiceplatform.bus.memory import MemoryBroker, MemoryBus

DOG_TEXT = "Здравствуйте, у меня есть собака"
PRICE_TEXT = "Сколько это стоит? У меня есть пятьсот рублей."

ROBOTS = {
    "testbot": {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": {"provider": "whisper"}},
    "ghostbot": {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": {"provider": "nosuch"}},
    "failbot": {"mode": "pipeline", "llm": {"provider": "openai"}, "asr": {"provider": "failing"}},
}


@pytest.fixture(scope="session")
def robots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robots")
    for name, config in ROBOTS.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def festival_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not festival_available():
        pytest.skip("festival (text2wave) is not installed: apt-get install festival festvox-ru")
    return tmp_path_factory.mktemp("festival")


@pytest.fixture(scope="session")
def dog_speech(festival_dir: Path) -> Int16Array:
    """'Здравствуйте, у меня есть собака' at 16 kHz."""
    samples, rate = read_wav(festival_wav(DOG_TEXT, festival_dir / "dog.wav"))
    assert rate == 16000
    return samples


@pytest.fixture(scope="session")
def price_speech(festival_dir: Path) -> Int16Array:
    samples, rate = read_wav(festival_wav(PRICE_TEXT, festival_dir / "price.wav"))
    assert rate == 16000
    return samples


@pytest.fixture
async def gateway_bus(broker: MemoryBroker) -> AsyncIterator[MemoryBus]:
    bus = broker.bus("gateway")
    yield bus
    await bus.close()
