"""LLM provider usage: one ``provider.usage`` per provider attempt of a turn, failed ones included.

Real providers against their stand-ins (a silent YandexGPT stream failing over to the OpenAI-
compatible one, which reports usage), then fakes for what the stand-ins cannot show: the model a
cascade answered with, tokens reported before a failure, and a turn cancelled by barge-in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.llm.helpers import Collector
from tests.llm.test_llm_chain import FOLDER, YANDEX_KEY, write_chain_robot
from tests.llm.test_llm_service import request, send
from tests.stand_ins.openai_server import OpenAIStandIn
from tests.stand_ins.yandexgpt_server import YandexGptStandIn
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotConfig, RobotRegistry
from voiceplatform.providers import LlmChunk, LlmOptions, LlmProvider, ProviderConnectionError
from voiceplatform.wire import ChatMessage, ControlInterrupt, LlmDone, LlmSentence, ProviderUsage
from vp_llm.app import LlmService, registry_factory
from vp_llm.settings import LlmSettings


def usage_metric(provider: str, unit: str) -> float:
    labels = {"stage": "llm", "provider": provider, "unit": unit}
    return REGISTRY.get_sample_value("vp_provider_usage_total", labels) or 0.0


@pytest.fixture
async def out(broker: MemoryBroker) -> Collector:
    return await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)


@pytest.fixture
async def yandex_server() -> AsyncIterator[YandexGptStandIn]:
    server = YandexGptStandIn(api_key=YANDEX_KEY, folder_id=FOLDER)
    await server.start()
    yield server
    await server.stop()


async def start_service(
    broker: MemoryBroker, robots_dir: Path, factory: Callable[[str, RobotConfig], LlmProvider] | None = None
) -> LlmService:
    service = LlmService(
        LlmSettings(), robots=RobotRegistry(robots_dir), provider_factory=factory or registry_factory
    )
    await service.start(broker.bus("llm"))
    return service


async def test_a_stalled_primary_and_the_fallback_that_answered_are_both_recorded(
    broker: MemoryBroker,
    out: Collector,
    robots_dir: Path,
    yandex_server: YandexGptStandIn,
    openai_server: OpenAIStandIn,
) -> None:
    robot = write_chain_robot(robots_dir, yandex_server, openai_server)
    yandex_server.behavior.stall_after = 0  # headers, then nothing: fails over after 0.5 s
    openai_server.behavior.prompt_tokens = 37
    service = await start_service(broker, robots_dir)
    try:
        requests_before = usage_metric("openai", "requests")
        tokens_before = usage_metric("openai", "prompt_tokens")
        failed_before = usage_metric("yandex", "failed_requests")
        await send(broker, request("t1", robot, "Здравствуйте"))
        (done,) = await out.wait(LlmDone, turn_id="t1", timeout_s=8.0)
        usage = await out.wait(ProviderUsage, count=2, turn_id="t1")
    finally:
        await service.drain(1.0)

    stalled, answered = usage
    assert (stalled.stage, stalled.provider, stalled.outcome) == ("llm", "yandex", "timeout")
    assert (stalled.prompt_tokens, stalled.completion_tokens) == (0, 0)  # it never reported any
    assert (answered.stage, answered.provider, answered.outcome) == ("llm", "openai", "ok")
    assert answered.prompt_tokens == 37 == done.prompt_tokens
    assert answered.completion_tokens == done.completion_tokens > 0
    assert answered.call_id == done.call_id and answered.characters == answered.audio_ms == 0
    assert usage_metric("openai", "requests") == requests_before + 1
    assert usage_metric("openai", "prompt_tokens") == tokens_before + 37
    assert usage_metric("yandex", "failed_requests") == failed_before + 1
    # on the usage subject, which the recorder's stream keeps
    assert all(s == subjects.usage(done.call_id) for _, s, m in out.items if isinstance(m, ProviderUsage))


class CascadeLlm:
    """Reports usage, then fails (``fail``), or answers with the model of its cascade that worked."""

    def __init__(self, name: str, fail: bool) -> None:
        self.name = name
        self.fail = fail

    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        if self.fail:
            yield LlmChunk(prompt_tokens=40, completion_tokens=0)
            raise ProviderConnectionError(self.name, "connection reset")
        yield LlmChunk(text="Добрый день. ")
        yield LlmChunk(
            text="Чем помочь?", prompt_tokens=51, completion_tokens=7, meta={"model": "gemini-2.0-flash"}
        )


class HangingLlm:
    """Says a sentence and a half with usage so far, then waits until it is cancelled."""

    name = "hanging"
    closed: asyncio.Event

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        try:
            # the first sentence is complete once the next one begins
            yield LlmChunk(text="Первое предложение. Второе", prompt_tokens=30, completion_tokens=4)
            await asyncio.Event().wait()
            yield LlmChunk(text="never")
        finally:
            self.closed.set()


def write_robot(robots_dir: Path, name: str, provider: str, fallback: list[str]) -> str:
    folder = robots_dir / name
    folder.mkdir()
    llm = {"provider": provider, "fallback": fallback}
    (folder / "config.json").write_text(json.dumps({"llm": llm}), encoding="utf-8")
    (folder / "prompt.txt").write_text("Будь краток.", encoding="utf-8")
    return name


async def test_tokens_reported_before_a_failure_and_the_answering_model_are_recorded(
    broker: MemoryBroker, out: Collector, robots_dir: Path
) -> None:
    robot = write_robot(robots_dir, "cascade_bot", "broken", ["gemini"])
    providers = {"broken": CascadeLlm("broken", fail=True), "gemini": CascadeLlm("gemini", fail=False)}
    service = await start_service(broker, robots_dir, lambda name, _robot: providers[name])
    try:
        await send(broker, request("t2", robot, "Здравствуйте"))
        (done,) = await out.wait(LlmDone, turn_id="t2")
        failed, answered = await out.wait(ProviderUsage, count=2, turn_id="t2")
    finally:
        await service.drain(1.0)
    assert (failed.provider, failed.outcome, failed.prompt_tokens, failed.model) == (
        "broken",
        "failed",
        40,
        "",
    )
    assert (answered.provider, answered.outcome, answered.model) == ("gemini", "ok", "gemini-2.0-flash")
    assert (answered.prompt_tokens, answered.completion_tokens) == (51, 7)
    assert (done.provider, done.prompt_tokens) == ("gemini", 51)  # llm.done still tells the answer only


async def test_a_turn_cancelled_by_barge_in_records_what_was_reported_so_far(
    broker: MemoryBroker, out: Collector, robots_dir: Path
) -> None:
    robot = write_robot(robots_dir, "hanging_bot", "hanging", [])
    hanging = HangingLlm()
    service = await start_service(broker, robots_dir, lambda name, _robot: hanging)
    try:
        req = request("t3", robot, "Здравствуйте")
        await send(broker, req)
        await out.wait(LlmSentence, turn_id="t3")
        await send(broker, ControlInterrupt(call_id=req.call_id, turn_id="t3", by_turn_id="t4"))
        (usage,) = await out.wait(ProviderUsage, turn_id="t3")
        await asyncio.wait_for(hanging.closed.wait(), 2.0)
    finally:
        await service.drain(1.0)
    assert (usage.provider, usage.outcome) == ("hanging", "cancelled")
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 4)
    assert out.of(LlmDone, turn_id="t3")[0].interrupted
