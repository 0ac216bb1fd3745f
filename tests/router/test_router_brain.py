"""prompt-router: topic by meaning, no-input re-prompt requests, continued/backchannel turns leave history."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.llm.helpers import Collector
from tests.router.test_router_service import CALL, ROBOTS, eventually, say, start_call, state_of
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import load_robot
from voiceplatform.wire import (
    AsrFinal,
    CallNoInput,
    ChatMessage,
    ControlInterrupt,
    LlmDone,
    LlmRequest,
    PromptSwitched,
)
from vp_router.app import RouterService
from vp_router.dialog_state import DialogStore
from vp_router.routing import PromptRoutes
from vp_router.settings import RouterSettings


@pytest.fixture
async def service(broker: MemoryBroker) -> AsyncIterator[RouterService]:
    router = RouterService(RouterSettings(robots_dir=ROBOTS))
    await router.start(broker.bus("prompt-router"))
    yield router
    await router.drain(1.0)


@pytest.fixture
async def kv(broker: MemoryBroker) -> DialogStore:
    return await DialogStore.open(broker.bus("test-kv"))


async def reply(broker: MemoryBroker, turn_id: str, text: str) -> None:
    await broker.bus("llm").publish(
        subjects.llm_done(CALL), LlmDone(call_id=CALL, turn_id=turn_id, text=text, sentences=1)
    )


def turns_of(history: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.turn_id) for m in history]


@pytest.mark.slow
async def test_topic_switches_by_meaning_and_stays_when_nothing_fits(
    broker: MemoryBroker, service: RouterService, kv: DialogStore
) -> None:
    robot = load_robot(ROBOTS / "topic_prompts_russian")
    await service.routes.get(service.robots.get(robot.name)).index.ready(60)  # embedded at start
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    await start_call(broker, kv)
    await say(broker, "t1", "у нас песик живёт")  # no keyword: the encoder decides
    (req1,) = await out.wait(LlmRequest, turn_id="t1", timeout_s=30)
    (switch,) = out.of(PromptSwitched, turn_id="t1")
    assert (switch.to_prompt, req1.prompt_id) == ("pets", "pets")
    assert switch.matched == "пёсик"  # the nearest example
    await say(broker, "t2", "какая завтра погода")  # off-topic: the current prompt stays
    (req2,) = await out.wait(LlmRequest, turn_id="t2")
    assert req2.prompt_id == "pets" and out.of(PromptSwitched, turn_id="t2") == []
    await say(broker, "t3", "совсем без денег сижу")
    (req3,) = await out.wait(LlmRequest, turn_id="t3")
    assert req3.prompt_id == "earning"


@pytest.mark.slow
async def test_routes_by_meaning_for_the_seed_phrases() -> None:
    routes = PromptRoutes(load_robot(ROBOTS / "topic_prompts_russian"))
    await routes.index.ready(60)
    for text in ("у меня щенок", "пёсик", "собака", "у нас котяра"):
        assert (await routes.route("default", text)).prompt_id == "pets", text
    for text in ("меня зовут анна", "расскажите подробнее", "а чем его кормить"):
        kept = await routes.route("children", text)
        assert (kept.prompt_id, kept.how, kept.matched) == ("children", "kept", ""), text


async def test_no_input_becomes_a_reprompt_request(
    broker: MemoryBroker, service: RouterService, kv: DialogStore
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    await start_call(broker, kv)
    await say(broker, "t1", "у меня собака")
    await out.wait(LlmRequest, turn_id="t1")
    await reply(broker, "t1", "Какой у вас питомец?")
    await eventually(lambda: _turns(kv, 1))
    await broker.bus("gateway").publish(
        subjects.lifecycle(CALL), CallNoInput(call_id=CALL, turn_id="n1", silence_ms=6000, count=1)
    )
    (req,) = await out.wait(LlmRequest, turn_id="n1")
    assert (req.event, req.user_text, req.prompt_id) == ("no_input", "", "pets")
    assert turns_of(req.history) == [("user", "t1"), ("assistant", "t1")]
    state = await state_of(kv)
    assert all(m.content for m in state.history)  # no empty caller message was stored


async def _turns(kv: DialogStore, n: int) -> bool:
    return (await state_of(kv)).turns == n


@pytest.mark.parametrize("reason", ["continued", "backchannel"])
async def test_dropped_caller_text_leaves_the_history(
    broker: MemoryBroker, service: RouterService, kv: DialogStore, reason: str
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    await start_call(broker, kv)
    await say(broker, "t1", "здравствуйте")
    await out.wait(LlmRequest, turn_id="t1")
    await reply(broker, "t1", "Здравствуйте! Как вас зовут?")
    await eventually(lambda: _turns(kv, 1))
    await say(broker, "t2", "угу")
    await out.wait(LlmRequest, turn_id="t2")
    await reply(broker, "t2", "Простите, не поняла.")
    await eventually(lambda: _turns(kv, 2))
    assert turns_of((await state_of(kv)).history)[-2:] == [("user", "t2"), ("assistant", "t2")]
    by = "t3" if reason == "continued" else ""
    await broker.bus("gateway").publish(
        subjects.control(CALL), ControlInterrupt(call_id=CALL, turn_id="t2", by_turn_id=by, reason=reason)
    )

    async def dropped() -> bool:
        return "t2" in (await state_of(kv)).dropped_turns

    await eventually(dropped)
    assert turns_of((await state_of(kv)).history) == [("user", "t1"), ("assistant", "t1")]
    await say(broker, "t3", "меня зовут Анна")
    (req3,) = await out.wait(LlmRequest, turn_id="t3")
    assert turns_of(req3.history) == [("user", "t1"), ("assistant", "t1")]


async def test_a_reply_to_a_dropped_turn_is_not_recorded_and_merged_turns_leave(
    broker: MemoryBroker, service: RouterService, kv: DialogStore
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    await start_call(broker, kv)
    await say(broker, "t1", "у меня")
    await out.wait(LlmRequest, turn_id="t1")
    # the interrupt comes before the reply's llm.done: the late reply stays out
    await broker.bus("gateway").publish(
        subjects.control(CALL),
        ControlInterrupt(call_id=CALL, turn_id="t1", by_turn_id="t2", reason="continued"),
    )
    await reply(broker, "t1", "Что у вас?")
    await broker.bus("asr").publish(
        subjects.asr(CALL),
        AsrFinal(call_id=CALL, turn_id="t2", text="у меня собака", merged=["t1"]),
    )
    (req2,) = await out.wait(LlmRequest, turn_id="t2")
    assert req2.history == []
    await reply(broker, "t2", "Какой породы?")
    await eventually(lambda: _turns(kv, 1))
    assert turns_of((await state_of(kv)).history) == [("user", "t2"), ("assistant", "t2")]
