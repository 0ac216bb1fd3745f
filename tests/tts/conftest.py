"""Fixtures for TTS tests: a temporary robots folder and settings pointing at it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voiceplatform.providers import ProviderRegistry
from vp_tts.app import PROVIDER_ENTRIES
from vp_tts.settings import TtsSettings

ROBOT = "tts_bot"

TEST_PROVIDERS = ProviderRegistry(
    "tts",
    {
        **PROVIDER_ENTRIES,
        "failing": "tests.tts.stand_in_providers:FailingTts",
        "breaks_midway": "tests.tts.stand_in_providers:BreaksMidwayTts",
        "slow": "tests.tts.stand_in_providers:SlowTts",
    },
)


def write_robot(robots_dir: Path, name: str, tts: dict[str, Any]) -> str:
    folder = robots_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {"mode": "pipeline", "llm": {"provider": "openai"}, "tts": tts}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return name


@pytest.fixture
def robots_dir(tmp_path: Path) -> Path:
    target = tmp_path / "robots"
    write_robot(target, ROBOT, {"provider": "festival", "sample_rate": 16000, "fallback": ["espeak"]})
    write_robot(target, "espeak_bot", {"provider": "espeak"})
    write_robot(target, "failing_bot", {"provider": "failing", "fallback": ["espeak"]})
    write_robot(target, "failing_only_bot", {"provider": "failing"})
    write_robot(target, "midway_bot", {"provider": "breaks_midway", "fallback": ["espeak"]})
    write_robot(target, "slow_bot", {"provider": "slow"})
    return target


@pytest.fixture
def settings(robots_dir: Path) -> TtsSettings:
    return TtsSettings(robots_dir=robots_dir, festival_procs=1, festival_timeout_s=5.0)
