"""Fixtures for LLM service tests: the OpenAI stand-in and robot folders pointing at it."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.stand_ins.openai_server import OpenAIStandIn

REPO_ROBOTS = Path(__file__).resolve().parents[2] / "robots"
API_KEY = "sk-test-secret-4242"


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def robots_dir(tmp_path: Path) -> Path:
    """A robots folder with copies of the repo robots (tests may add their own)."""
    target = tmp_path / "robots"
    target.mkdir()
    for name in ("pipeline_russian", "topic_prompts_russian"):
        shutil.copytree(REPO_ROBOTS / name, target / name, ignore=shutil.ignore_patterns("*.wav"))
    return target


@pytest.fixture
def make_openai_robot(robots_dir: Path, openai_server: OpenAIStandIn) -> Callable[..., str]:
    def make(name: str = "openai_bot", **llm: Any) -> str:
        folder = robots_dir / name
        folder.mkdir()
        config = {
            "llm": {
                "provider": "openai",
                "base_url": openai_server.base_url,
                "model": "stand-in",
                "timeout_s": 5,
                **llm,
            }
        }
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        (folder / "prompt.txt").write_text("Ты вежливый помощник.", encoding="utf-8")
        (folder / ".env").write_text(f"OPENAI_API_KEY={API_KEY}\n", encoding="utf-8")
        shutil.copy(REPO_ROBOTS / "pipeline_russian" / "dialog.json", folder / "dialog.json")
        return name

    return make
