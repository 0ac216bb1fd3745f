"""The LLM fallback chain with cloud providers: a stream that opens and stays silent fails over."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.llm.conftest import API_KEY
from tests.llm.helpers import Collector
from tests.llm.test_llm_service import request, send
from tests.stand_ins.openai_server import OpenAIStandIn
from tests.stand_ins.yandexgpt_server import YandexGptStandIn
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotRegistry
from voiceplatform.wire import LlmDone, LlmSentence, StageError
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings

YANDEX_KEY, FOLDER = "AQVN-yandex-test-key-0001", "b1g-test-folder"


@pytest.fixture
async def service(broker: MemoryBroker, robots_dir: Path) -> AsyncIterator[LlmService]:
    started = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await started.start(broker.bus("llm"))
    yield started
    await started.drain(1.0)


@pytest.fixture
async def out(broker: MemoryBroker) -> Collector:
    return await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)


@pytest.fixture
async def yandex_server() -> AsyncIterator[YandexGptStandIn]:
    server = YandexGptStandIn(api_key=YANDEX_KEY, folder_id=FOLDER)
    await server.start()
    yield server
    await server.stop()


def write_chain_robot(robots_dir: Path, yandex: YandexGptStandIn, openai: OpenAIStandIn) -> str:
    folder = robots_dir / "chain_bot"
    folder.mkdir()
    config = {
        "provider": "yandex",
        "fallback": ["openai"],
        "base_url": openai.base_url,  # the openai provider's endpoint
        "model": "stand-in",
        "timeout_s": 10,
        "first_token_timeout_s": 0.5,
        "providers": {
            "yandex": {"base_url": yandex.base_url, "folder_id": FOLDER, "model": "yandexgpt-lite"}
        },
    }
    (folder / "config.json").write_text(json.dumps({"llm": config}), encoding="utf-8")
    (folder / "prompt.txt").write_text("Ты вежливый помощник.", encoding="utf-8")
    (folder / ".env").write_text(f"OPENAI_API_KEY={API_KEY}\nYANDEX_API_KEY={YANDEX_KEY}\n", encoding="utf-8")
    return "chain_bot"


async def test_a_silent_primary_fails_over_within_the_robots_first_token_deadline(
    broker: MemoryBroker,
    service: LlmService,
    out: Collector,
    robots_dir: Path,
    yandex_server: YandexGptStandIn,
    openai_server: OpenAIStandIn,
) -> None:
    robot = write_chain_robot(robots_dir, yandex_server, openai_server)
    yandex_server.behavior.stall_after = 0  # headers, then nothing: the stream is open and silent
    started = time.monotonic()
    await send(broker, request("t1", robot, "Здравствуйте"))
    (done,) = await out.wait(LlmDone, turn_id="t1", timeout_s=8.0)
    elapsed = time.monotonic() - started
    assert done.provider == "openai" and done.text
    assert elapsed < 3.0  # the 0.5 s deadline, not the provider's own 10 s timeout
    assert [e.kind for e in out.of(StageError, turn_id="t1")] == ["timeout"]
    assert all(s.text for s in out.of(LlmSentence, turn_id="t1"))
    await yandex_server.recorded.client_closed.wait()  # the silent stream was closed


async def test_the_primary_speaks_when_healthy(
    broker: MemoryBroker,
    service: LlmService,
    out: Collector,
    robots_dir: Path,
    yandex_server: YandexGptStandIn,
    openai_server: OpenAIStandIn,
) -> None:
    robot = write_chain_robot(robots_dir, yandex_server, openai_server)
    await send(broker, request("t1", robot, "Здравствуйте"))
    (done,) = await out.wait(LlmDone, turn_id="t1", timeout_s=8.0)
    assert done.provider == "yandex" and done.text
    assert out.of(StageError, turn_id="t1") == []
