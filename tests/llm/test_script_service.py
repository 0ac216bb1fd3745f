"""The script brain through the LLM service: transfer, hangup and no-input reach llm.done."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotRegistry
from voiceplatform.wire import LlmDone, LlmRequest
from vp_llm.app import LlmService
from vp_llm.providers.script import DIALOG_WARNINGS
from vp_llm.settings import LlmSettings
from vp_llm.turn import NO_INPUT_HINT, build_messages

CALL = "call-b1"


def request(turn_id: str, text: str, dialog_state: str = "", event: str = "") -> LlmRequest:
    return LlmRequest(
        call_id=CALL,
        turn_id=turn_id,
        robot="pipeline_russian",
        prompt_id="default",
        system_prompt="",
        history=[],
        user_text=text,
        sample_rate=8000,
        dialog_state=dialog_state,
        event=event,
    )


def script_robot(robots_dir: Path, name: str, intents: list[dict[str, Any]], fallback: str) -> None:
    """A script robot of one state: ``intents``, else ``fallback``."""
    folder = robots_dir / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"llm": {"provider": "script"}}), encoding="utf-8")
    dialog = {"start": "m", "states": {"m": {"intents": intents, "fallback": fallback}}}
    (folder / "dialog.json").write_text(json.dumps(dialog, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
async def llm(broker: MemoryBroker, robots_dir: Path) -> AsyncIterator[LlmService]:
    dialog = robots_dir / "pipeline_russian" / "dialog.json"
    data = json.loads(dialog.read_text(encoding="utf-8"))
    data["transfer_to"] = "queue-sales"
    dialog.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    service = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await service.start(broker.bus("llm"))
    yield service
    await service.drain(1.0)


async def ask(broker: MemoryBroker, out: Collector, req: LlmRequest) -> LlmDone:
    await broker.bus("router").publish(subjects.llm_request(CALL), req)
    (done,) = await out.wait(LlmDone, turn_id=req.turn_id)
    return done


async def test_operator_transfer_goodbye_hangup_and_no_input(broker: MemoryBroker, llm: LlmService) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    transfer = await ask(broker, out, request("t1", "Соедините с оператором"))
    assert transfer.transfer_to == "queue-sales" and not transfer.hangup
    assert transfer.text.startswith("Соединяю")

    silent = await ask(broker, out, request("t2", "", transfer.dialog_state, event="no_input"))
    assert not silent.hangup and silent.text == "Вас не слышно. Повторите, пожалуйста."
    state = silent.dialog_state
    for n in (3, 4):
        silent = await ask(broker, out, request(f"t{n}", "", state, event="no_input"))
        state = silent.dialog_state
    assert silent.hangup and "не слышно" in silent.text and silent.transfer_to == ""

    bye = await ask(broker, out, request("t5", "до свидания", event=""))
    assert bye.hangup and bye.transfer_to == ""


async def test_dialog_warnings_are_logged_and_counted_at_start(
    broker: MemoryBroker, robots_dir: Path
) -> None:
    intent = {"keywords": ["цена"], "examples": ["how much is it"], "reply": "Сто."}
    script_robot(robots_dir, "english_examples", [intent], "?")
    counter = DIALOG_WARNINGS.labels("foreign_examples")
    before = counter._value.get()
    service = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await service.start(broker.bus("llm"))
    try:
        assert counter._value.get() == before + 1
    finally:
        await service.drain(1.0)


def test_no_input_requests_carry_no_empty_user_message() -> None:
    messages = build_messages(request("t1", "", event="no_input"))
    assert [m.content for m in messages if m.role == "user"] == [NO_INPUT_HINT]
    spoken = build_messages(request("t2", "привет"))
    assert spoken[-1].content == "привет"


async def test_a_scripted_reply_is_filled_with_the_calls_variables(
    broker: MemoryBroker, robots_dir: Path
) -> None:
    intent = {"keywords": ["долг"], "reply": "{name}, ваш долг {debt} рублей. Формат: {json}."}
    script_robot(robots_dir, "collector_script", [intent], "Повторите, {name}.")
    service = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await service.start(broker.bus("llm"))
    try:
        out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
        variables = {"name": "Анна Петровна", "debt": "1500"}
        req = request("v1", "какой у меня долг", event="")
        req.robot, req.variables = "collector_script", variables
        done = await ask(broker, out, req)
        # known variables filled; an unknown placeholder stays as written
        assert done.text == "Анна Петровна, ваш долг 1500 рублей. Формат: {json}."
        req = request("v2", "алло", done.dialog_state)
        req.robot, req.variables = "collector_script", variables
        assert (await ask(broker, out, req)).text == "Повторите, Анна Петровна."
        req = request("v3", "какой долг")
        req.robot = "collector_script"  # an inbound call: no variables, the text as written
        assert (await ask(broker, out, req)).text.startswith("{name}, ваш долг {debt}")
    finally:
        await service.drain(1.0)
