"""LLM service on the in-memory bus: sentence streaming, barge-in, provider errors, fallback, scaling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.llm.conftest import API_KEY
from tests.llm.helpers import Collector, settle
from tests.stand_ins.openai_server import OpenAIStandIn
from voiceplatform import metrics, subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import RobotRegistry
from voiceplatform.wire import ChatMessage, ControlInterrupt, LlmDone, LlmRequest, LlmSentence, StageError
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings

CALL = "call-l1"


def request(
    turn_id: str,
    robot: str,
    text: str,
    dialog_state: str = "",
    call_id: str = CALL,
    prompt_id: str = "default",
) -> LlmRequest:
    return LlmRequest(
        call_id=call_id,
        turn_id=turn_id,
        robot=robot,
        prompt_id=prompt_id,
        system_prompt="Будь краток.",
        history=[
            ChatMessage(role="user", content="Привет", turn_id="t0"),
            ChatMessage(role="assistant", content="Здравствуйте!", turn_id="t0"),
        ],
        user_text=text,
        sample_rate=8000,
        dialog_state=dialog_state,
    )


@pytest.fixture
async def llm(broker: MemoryBroker, robots_dir: Path) -> AsyncIterator[LlmService]:
    service = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await service.start(broker.bus("llm"))
    # start-up embeds the script robots' examples; a turn before that is decided by keywords only
    await service.examples_embedded(timeout_s=120)
    yield service
    await service.drain(1.0)


@pytest.fixture
async def out(broker: MemoryBroker) -> Collector:
    return await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)


async def send(broker: MemoryBroker, msg: LlmRequest | ControlInterrupt) -> None:
    bus = broker.bus("router")
    subject = (
        subjects.llm_request(msg.call_id) if isinstance(msg, LlmRequest) else subjects.control(msg.call_id)
    )
    await bus.publish(subject, msg)


async def test_script_robot_streams_sentences_then_done(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    await send(broker, request("t1", "pipeline_russian", "У меня есть собака"))
    (done,) = await out.wait(LlmDone, turn_id="t1")
    sentences = out.of(LlmSentence, turn_id="t1")
    assert [s.text for s in sentences] == [
        "Для собак и кошек у нас есть корма, игрушки и лежанки.",
        "Какой у вас питомец?",
    ]
    assert [s.index for s in sentences] == [0, 1]
    assert [s.last for s in sentences] == [False, True]
    assert all(s.sample_rate == 8000 and s.robot == "pipeline_russian" for s in sentences)
    assert out.first_time(LlmSentence, index=1) <= out.first_time(LlmDone)
    assert done.text == " ".join(s.text for s in sentences)
    assert (done.sentences, done.provider, done.interrupted, done.hangup) == (2, "script", False, False)
    assert json.loads(done.dialog_state)["state"] == "pets"

    # the state carries over: in "pets" a dog question goes to the order step; goodbye hangs up
    await send(broker, request("t2", "pipeline_russian", "Собака, лабрадор", done.dialog_state))
    (done2,) = await out.wait(LlmDone, turn_id="t2")
    assert json.loads(done2.dialog_state)["state"] == "order"
    await send(broker, request("t3", "pipeline_russian", "Спасибо, до свидания", done2.dialog_state))
    (done3,) = await out.wait(LlmDone, turn_id="t3")
    assert done3.hangup and done3.text == "Спасибо за звонок, всего доброго!"


async def test_topic_robot_follows_the_prompt_chosen_by_the_router(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    state = json.dumps({"state": "main"})
    for turn, prompt in (("p", "pets"), ("e", "earning"), ("c", "children")):
        question = request(turn, "topic_prompts_russian", "а сколько это стоит?", state, prompt_id=prompt)
        await send(broker, question)
    replies = {d.turn_id: d.text for d in await out.wait(LlmDone, count=3)}
    assert "Корм" in replies["p"] and "курс" in replies["e"] and "Игрушки" in replies["c"]


async def test_first_sentence_goes_out_while_the_reply_is_still_generated(
    broker: MemoryBroker,
    llm: LlmService,
    out: Collector,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot()
    openai_server.behavior.reply = (
        "Конечно, помогу. Сначала расскажите, что случилось. Потом решим, что делать дальше."
    )
    openai_server.behavior.chunk_delay_s = 0.03
    await send(broker, request("t1", robot, "Помогите"))
    (first,) = await out.wait(LlmSentence, turn_id="t1", index=0)
    stream = openai_server.recorded.streams[0]
    assert first.text == "Конечно, помогу."
    assert stream.chunks_sent < stream.chunks_total, "first sentence waited for the whole reply"
    (done,) = await out.wait(LlmDone, turn_id="t1")
    assert stream.finished
    assert [s.text for s in out.of(LlmSentence, turn_id="t1")] == [
        "Конечно, помогу.",
        "Сначала расскажите, что случилось.",
        "Потом решим, что делать дальше.",
    ]
    words = len(openai_server.behavior.reply.split())  # the stand-in streams one word per chunk
    assert (done.provider, done.sentences, done.prompt_tokens, done.completion_tokens) == (
        "openai",
        3,
        12,
        words,
    )
    body = openai_server.recorded.requests[0]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "Помогите"


async def test_interrupt_cancels_mid_stream_and_closes_the_connection(
    broker: MemoryBroker,
    llm: LlmService,
    out: Collector,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot()
    openai_server.behavior.reply = " ".join(f"Это предложение номер {i}." for i in range(40))
    openai_server.behavior.chunk_delay_s = 0.05
    await send(broker, request("t1", robot, "Расскажите всё"))
    await out.wait(LlmSentence, turn_id="t1", index=0)
    # the vendor's next chunk is now 60 s away: what happens below happens at once, not at a chunk
    openai_server.behavior.chunk_delay_s = 60.0
    await send(broker, ControlInterrupt(call_id=CALL, turn_id="t1", played_ms=300, played_text="Это"))
    (done,) = await out.wait(LlmDone, turn_id="t1", timeout_s=10.0)
    await asyncio.wait_for(openai_server.recorded.client_closed.wait(), 10.0)
    assert openai_server.recorded.streams[0].closed_at > 0  # the connection closed mid-stream
    sentences_at_done = len(out.of(LlmSentence, turn_id="t1"))
    await asyncio.sleep(0.3)
    assert len(out.of(LlmSentence, turn_id="t1")) == sentences_at_done  # nothing after the interrupt
    assert done.interrupted and not done.hangup
    assert done.text and openai_server.behavior.reply.startswith(done.text)
    assert not openai_server.recorded.streams[0].finished
    assert llm.health()["turns_in_flight"] == 0

    # a late (re-delivered) request for the interrupted turn is ignored
    await send(broker, request("t1", robot, "Расскажите всё"))
    await asyncio.sleep(0.1)
    assert len(openai_server.recorded.requests) == 1
    assert len(out.of(LlmDone, turn_id="t1")) == 1


async def test_interrupt_before_the_request_arrives(
    broker: MemoryBroker, llm: LlmService, out: Collector
) -> None:
    await send(broker, ControlInterrupt(call_id=CALL, turn_id="t9", played_text=""))
    await settle()
    await send(broker, request("t9", "pipeline_russian", "У меня собака"))
    await send(broker, request("t10", "pipeline_russian", "У меня собака"))
    await out.wait(LlmDone, turn_id="t10")
    assert out.of(LlmDone, turn_id="t9") == [] and out.of(LlmSentence, turn_id="t9") == []


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (401, False)])
async def test_provider_http_errors_become_stage_errors(
    broker: MemoryBroker,
    llm: LlmService,
    out: Collector,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
    status: int,
    retryable: bool,
) -> None:
    robot = make_openai_robot()
    openai_server.behavior.fail_status = status
    openai_server.behavior.fail_message = f"bad key {API_KEY}"
    before = metrics.PROVIDER_ERRORS.labels("llm", "openai", "status")._value.get()
    await send(broker, request("t1", robot, "Привет"))
    (err,) = await out.wait(StageError, turn_id="t1")
    (done,) = await out.wait(LlmDone, turn_id="t1")
    assert (err.stage, err.kind, err.retryable) == ("llm", "status", retryable)
    assert str(status) in err.detail and API_KEY not in err.detail
    assert (done.text, done.sentences) == ("", 0)
    assert out.of(LlmSentence) == []
    assert metrics.PROVIDER_ERRORS.labels("llm", "openai", "status")._value.get() == before + 1


async def test_fallback_only_before_any_text_went_out(
    broker: MemoryBroker,
    llm: LlmService,
    out: Collector,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    robot = make_openai_robot(fallback=["script"])
    openai_server.behavior.fail_status = 503
    await send(broker, request("t1", robot, "У меня есть собака"))
    (done,) = await out.wait(LlmDone, turn_id="t1")
    assert done.provider == "script" and done.text.startswith("Для собак")
    assert [e.kind for e in out.of(StageError, turn_id="t1")] == ["status"]

    # the stream breaks after the first sentence went out: no fallback, the turn ends with what was said
    openai_server.behavior.fail_status = None
    openai_server.behavior.reply = "Первое готово. Второе не успеем сказать никогда."
    openai_server.behavior.stop_after = 3
    await send(broker, request("t2", robot, "У меня есть собака"))
    (done2,) = await out.wait(LlmDone, turn_id="t2")
    assert [s.text for s in out.of(LlmSentence, turn_id="t2")] == ["Первое готово."]
    assert done2.provider == "openai" and done2.sentences == 1
    assert [e.kind for e in out.of(StageError, turn_id="t2")] == ["protocol"]


async def test_unknown_robot_or_provider_fails_the_turn_not_the_service(
    broker: MemoryBroker, llm: LlmService, out: Collector, make_openai_robot: Callable[..., str]
) -> None:
    await send(broker, request("t1", "no_such_robot", "Привет"))
    robot = make_openai_robot("weird", provider="nonexistent")
    await send(broker, request("t2", robot, "Привет"))
    errors = await out.wait(StageError, count=2)
    assert {(e.turn_id, e.kind) for e in errors} == {("t1", "robot_config"), ("t2", "unknown_provider")}
    await send(broker, request("t3", "pipeline_russian", "Привет"))
    await out.wait(LlmDone, turn_id="t3")


async def test_two_instances_handle_each_request_once(broker: MemoryBroker, robots_dir: Path) -> None:
    services = [LlmService(LlmSettings(), robots=RobotRegistry(robots_dir)) for _ in range(2)]
    for i, s in enumerate(services):
        await s.start(broker.bus(f"llm-{i}"))
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    turns = [f"t{i}" for i in range(30)]
    for turn in turns:
        await send(broker, request(turn, "pipeline_russian", "Сколько стоит доставка?"))
    await out.wait(LlmDone, count=len(turns))
    await settle(50)
    done = out.of(LlmDone)
    assert sorted(d.turn_id for d in done) == sorted(turns)  # each exactly once
    assert len(out.of(LlmSentence)) == sum(d.sentences for d in done)
    for s in services:
        await s.drain(1.0)


async def test_drain_finishes_in_flight_turns(
    broker: MemoryBroker,
    robots_dir: Path,
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
) -> None:
    service = LlmService(LlmSettings(), robots=RobotRegistry(robots_dir))
    await service.start(broker.bus("llm"))
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    robot = make_openai_robot()
    openai_server.behavior.reply = "Раз. Два. Три."
    openai_server.behavior.chunk_delay_s = 0.05
    await send(broker, request("t1", robot, "Считай"))
    await out.wait(LlmSentence, turn_id="t1")
    await service.drain(5.0)
    (done,) = out.of(LlmDone, turn_id="t1")
    assert not done.interrupted and done.sentences == 3
    assert not service.ready()
    await send(broker, request("t2", robot, "Считай"))  # no longer subscribed
    await asyncio.sleep(0.05)
    assert out.of(LlmDone, turn_id="t2") == []
