"""prompt-router on the in-memory bus: topic switching, history, interrupts, dialog state in KV."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.llm.helpers import Collector, settle
from voiceplatform import subjects
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import load_robot
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ChatMessage,
    ControlInterrupt,
    LlmDone,
    LlmRequest,
    PromptSwitched,
    StageError,
)
from vp_router.app import RouterService
from vp_router.dialog_state import DialogState, DialogStore
from vp_router.settings import RouterSettings

ROBOTS = Path(__file__).resolve().parents[2] / "robots"
ROBOT = "topic_prompts_russian"
CALL = "call-r1"


@pytest.fixture
async def router(broker: MemoryBroker) -> AsyncIterator[RouterService]:
    service = RouterService(RouterSettings(robots_dir=ROBOTS))
    await service.start(broker.bus("prompt-router"))
    yield service
    await service.drain(1.0)


@pytest.fixture
async def store(broker: MemoryBroker) -> DialogStore:
    return await DialogStore.open(broker.bus("test-kv"))


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def start_call(broker: MemoryBroker, store: DialogStore, call_id: str = CALL) -> None:
    bus = broker.bus("gateway")
    await bus.publish(
        subjects.lifecycle(call_id),
        CallStarted(call_id=call_id, robot=ROBOT, channel="web", sample_rate=16000),
    )

    async def created() -> bool:
        return await store.load(call_id) is not None

    await eventually(created)


async def say(broker: MemoryBroker, turn_id: str, text: str, call_id: str = CALL) -> None:
    await broker.bus("asr").publish(
        subjects.asr(call_id),
        AsrFinal(call_id=call_id, turn_id=turn_id, text=text, speech_end_ts_ms=1234),
    )


async def state_of(store: DialogStore, call_id: str = CALL) -> DialogState:
    state = await store.load(call_id)
    assert state is not None
    return state


async def test_topic_switching_on_every_message(
    broker: MemoryBroker, router: RouterService, store: DialogStore
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    robot = load_robot(ROBOTS / ROBOT)
    await start_call(broker, store)
    assert (await state_of(store)).prompt_id == "default"

    await say(broker, "t1", "Привет, у меня есть собака")
    (req1,) = await out.wait(LlmRequest, turn_id="t1")
    (switch,) = out.of(PromptSwitched, turn_id="t1")
    assert (switch.from_prompt, switch.to_prompt, switch.matched) == ("default", "pets", "собака")
    assert out.first_time(PromptSwitched) <= out.first_time(LlmRequest)
    assert req1.prompt_id == "pets"
    assert req1.system_prompt == robot.prompt_text("pets") != robot.system_prompt
    assert req1.history == []
    assert (req1.user_text, req1.sample_rate, req1.speech_end_ts_ms, req1.robot) == (
        "Привет, у меня есть собака",
        16000,
        1234,
        ROBOT,
    )
    assert req1.dialog_state == ""  # the script state starts empty; the topic travels as prompt_id

    new_script_state = json.dumps({"state": "main", "prompt": "pets"})
    await broker.bus("llm").publish(
        subjects.llm_done(CALL),
        LlmDone(
            call_id=CALL,
            turn_id="t1",
            text="Для питомца есть корма.",
            sentences=1,
            dialog_state=new_script_state,
        ),
    )

    async def answered() -> bool:
        return (await state_of(store)).turns == 1

    await eventually(answered)

    # no keyword: the topic stays
    await say(broker, "t2", "А сколько это стоит?")
    (req2,) = await out.wait(LlmRequest, turn_id="t2")
    assert out.of(PromptSwitched, turn_id="t2") == []
    assert req2.prompt_id == "pets"
    assert [(m.role, m.content, m.turn_id) for m in req2.history] == [
        ("user", "Привет, у меня есть собака", "t1"),
        ("assistant", "Для питомца есть корма.", "t1"),
    ]

    # a new topic switches at once, inflected ("денег у меня нет")
    await say(broker, "t3", "Да денег у меня нет")
    (req3,) = await out.wait(LlmRequest, turn_id="t3")
    (switch3,) = out.of(PromptSwitched, turn_id="t3")
    assert (switch3.from_prompt, switch3.to_prompt) == ("pets", "earning")
    assert req3.system_prompt == robot.prompt_text("earning")
    state = await state_of(store)
    assert state.prompt_id == "earning"
    assert state.script_state == new_script_state

    await say(broker, "t4", "У меня двое детей")
    (req4,) = await out.wait(LlmRequest, turn_id="t4")
    assert req4.prompt_id == "children"


async def test_interrupt_before_and_after_llm_done(
    broker: MemoryBroker, router: RouterService, store: DialogStore
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ANY_LLM_REQUEST)
    llm = broker.bus("llm")
    gateway = broker.bus("gateway")
    await start_call(broker, store)

    # interrupt arrives BEFORE llm.done: kept pending, applied when the reply is recorded
    await say(broker, "t1", "расскажите о себе")
    await out.wait(LlmRequest, turn_id="t1")
    await gateway.publish(
        subjects.control(CALL),
        ControlInterrupt(call_id=CALL, turn_id="t1", played_ms=700, played_text="Меня"),
    )

    async def pending() -> bool:
        return "t1" in (await state_of(store)).pending_interrupts

    await eventually(pending)
    await llm.publish(
        subjects.llm_done(CALL),
        LlmDone(call_id=CALL, turn_id="t1", text="Меня зовут Робот.", sentences=1, interrupted=True),
    )

    async def recorded_t1() -> bool:
        return (await state_of(store)).turns == 1

    await eventually(recorded_t1)
    state = await state_of(store)
    assert [(m.role, m.content, m.interrupted) for m in state.history] == [
        ("user", "расскажите о себе", False),
        ("assistant", "Меня", True),
    ]
    assert state.pending_interrupts == {}

    # interrupt arrives AFTER llm.done: the recorded reply is truncated to what was played
    await say(broker, "t2", "а что ещё")
    await out.wait(LlmRequest, turn_id="t2")
    await llm.publish(
        subjects.llm_done(CALL),
        LlmDone(call_id=CALL, turn_id="t2", text="Много всего. Спросите что угодно.", sentences=2),
    )

    async def recorded_t2() -> bool:
        return (await state_of(store)).turns == 2

    await eventually(recorded_t2)
    await gateway.publish(
        subjects.control(CALL),
        ControlInterrupt(call_id=CALL, turn_id="t2", played_ms=900, played_text="Много всего."),
    )

    async def truncated() -> bool:
        return (await state_of(store)).history[-1].interrupted

    await eventually(truncated)
    last = (await state_of(store)).history[-1]
    assert (last.role, last.content, last.turn_id) == ("assistant", "Много всего.", "t2")

    # the next request carries the truncated history
    await say(broker, "t3", "понятно")
    (req3,) = await out.wait(LlmRequest, turn_id="t3")
    assert [(m.content, m.interrupted) for m in req3.history if m.role == "assistant"] == [
        ("Меня", True),
        ("Много всего.", True),
    ]


async def test_no_dialog_state_and_empty_text(
    broker: MemoryBroker, router: RouterService, store: DialogStore
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    await say(broker, "t1", "   ", call_id="call-unknown")
    await say(broker, "t2", "у меня собака", call_id="call-unknown")
    # looked for again for 2.5 ack waits (call.started may come late: test_router_llm_nats.py)
    (err,) = await out.wait(StageError, timeout_s=10.0)
    assert (err.stage, err.kind, err.turn_id) == ("router", "no_dialog_state", "t2")
    await settle()
    assert out.of(LlmRequest) == []


async def test_call_ended_deletes_state(
    broker: MemoryBroker, router: RouterService, store: DialogStore
) -> None:
    await start_call(broker, store)
    await broker.bus("gateway").publish(subjects.lifecycle(CALL), CallEnded(call_id=CALL, reason="hangup"))

    async def deleted() -> bool:
        return await store.load(CALL) is None

    await eventually(deleted)


async def test_two_routers_share_the_work_and_the_state(broker: MemoryBroker, store: DialogStore) -> None:
    routers = [RouterService(RouterSettings(robots_dir=ROBOTS)) for _ in range(2)]
    for i, r in enumerate(routers):
        await r.start(broker.bus(f"prompt-router-{i}"))
    out = await Collector.on(broker.bus("watch"), subjects.ANY_LLM_REQUEST)
    calls = [f"call-m{i}" for i in range(6)]
    for call_id in calls:
        await start_call(broker, store, call_id)
    for call_id in calls:
        await say(broker, f"{call_id}-t1", "у меня собака", call_id=call_id)
    await out.wait(LlmRequest, count=len(calls))
    await settle()
    assert sorted(r.turn_id for r in out.of(LlmRequest)) == sorted(f"{c}-t1" for c in calls)
    for call_id in calls:
        state = await state_of(store, call_id)
        assert state.prompt_id == "pets"
        assert len(state.history) == 1
    for r in routers:
        await r.drain(1.0)


class RacyKv:
    """A KV where another writer changes the key between our read and our write, ``races`` times."""

    def __init__(self, inner: object, races: int) -> None:
        self.inner = inner
        self.races = races

    async def get(self, key: str) -> tuple[bytes, int] | None:
        entry = await self.inner.get(key)  # type: ignore[attr-defined]
        if entry is not None and self.races > 0:
            self.races -= 1
            await self.inner.put(key, entry[0])  # type: ignore[attr-defined]
        return entry  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_compare_and_set_retries_then_gives_up(broker: MemoryBroker) -> None:
    from vp_router.dialog_state import DialogConflict

    kv = await broker.bus("t").key_value(subjects.DIALOG_BUCKET)
    state = DialogState(call_id="c1", robot=ROBOT, channel="web", sample_rate=8000, prompt_id="default")
    await DialogStore(kv).create(state)

    runs = 0

    def bump(s: DialogState) -> int:
        nonlocal runs
        runs += 1
        s.turns += 1
        return s.turns

    saved = await DialogStore(RacyKv(kv, races=3)).mutate("c1", bump)  # type: ignore[arg-type]
    assert saved is not None and saved[1] == 1 and runs == 4  # re-read and re-applied, never doubled
    assert (await DialogStore(kv).load("c1")).turns == 1  # type: ignore[union-attr]
    with pytest.raises(DialogConflict):
        await DialogStore(RacyKv(kv, races=5)).mutate("c1", bump)  # type: ignore[arg-type]
    assert await DialogStore(kv).mutate("missing", bump) is None


async def test_a_change_starts_from_a_state_read_before_and_reads_again_when_it_went_stale(
    broker: MemoryBroker,
) -> None:
    kv = await broker.bus("t").key_value(subjects.DIALOG_BUCKET)
    store = DialogStore(kv)
    await store.create(DialogState(call_id="c1", robot=ROBOT, channel="web", sample_rate=8000, prompt_id="a"))

    def bump(s: DialogState) -> int:
        s.turns += 1
        return s.turns

    read = await store.read("c1")
    assert read is not None
    saved = await store.mutate("c1", bump, read)
    assert saved is not None and saved[1] == 1
    stale = await store.read("c1")
    assert stale is not None
    await store.mutate("c1", bump)  # another change lands after our read
    saved = await store.mutate("c1", bump, stale)
    assert saved is not None and saved[1] == 3  # not 2: the stale read lost and was read again
    assert (await store.load("c1")).turns == 3  # type: ignore[union-attr]
    gone = await store.read("c1")
    await store.delete("c1")
    assert await store.mutate("c1", bump, gone) is None  # the call ended after our read


class CountingKv:
    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.gets = 0

    async def get(self, key: str) -> tuple[bytes, int] | None:
        self.gets += 1
        return await self.inner.get(key)  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_an_instance_changes_the_calls_it_alone_serves_without_reading_them_back(
    broker: MemoryBroker,
) -> None:
    kv = CountingKv(await broker.bus("t").key_value(subjects.DIALOG_BUCKET))
    store = DialogStore(kv)  # type: ignore[arg-type]
    await store.create(DialogState(call_id="c1", robot=ROBOT, channel="web", sample_rate=8000, prompt_id="a"))

    def bump(s: DialogState) -> int:
        s.turns += 1
        return s.turns

    for _ in range(3):
        await store.mutate("c1", bump)
    assert kv.gets == 0
    assert (await store.load("c1")).turns == 3  # type: ignore[union-attr]


async def test_the_store_remembers_a_bounded_number_of_calls(broker: MemoryBroker) -> None:
    kv = CountingKv(await broker.bus("t").key_value(subjects.DIALOG_BUCKET))
    store = DialogStore(kv, remembered=2)  # type: ignore[arg-type]
    for call_id in ("c1", "c2", "c3"):
        await store.create(
            DialogState(call_id=call_id, robot=ROBOT, channel="web", sample_rate=8000, prompt_id="a")
        )
    assert store.remembered("c1") is None and store.remembered("c3") is not None

    def bump(s: DialogState) -> int:
        s.turns += 1
        return s.turns

    saved = await store.mutate("c1", bump)  # forgotten: read from the KV, then remembered again
    assert saved is not None and saved[1] == 1 and kv.gets == 1
    assert store.remembered("c1") is not None and store.remembered("c2") is None


async def test_changes_by_two_instances_of_one_call_all_land(broker: MemoryBroker) -> None:
    kv = await broker.bus("t").key_value(subjects.DIALOG_BUCKET)
    first, second = DialogStore(kv), DialogStore(kv)
    await first.create(DialogState(call_id="c1", robot=ROBOT, channel="web", sample_rate=8000, prompt_id="a"))

    def say(word: str) -> Callable[[DialogState], int]:
        def change(s: DialogState) -> int:
            s.history.append(ChatMessage(role="user", content=word, turn_id=word))
            s.turns += 1
            return s.turns

        return change

    for i, store in enumerate([first, second, first, first, second, first]):
        saved = await store.mutate("c1", say(f"w{i}"))
        assert saved is not None and saved[1] == i + 1  # each started from the latest state
    state = await second.load("c1")
    assert state is not None and [m.content for m in state.history] == [f"w{i}" for i in range(6)]
    await second.delete("c1")  # the call ended on the other instance
    assert await first.mutate("c1", say("late")) is None


def test_dialog_state_rejects_newer_versions() -> None:
    from vp_router.dialog_state import DialogStateError, decode_state, encode_state

    state = DialogState(call_id="c", robot="r", channel="web", sample_rate=16000, prompt_id="p", v=2)
    with pytest.raises(DialogStateError):
        decode_state(encode_state(state))
    with pytest.raises(DialogStateError):
        decode_state(b"\x01garbage")


async def test_keys_are_routed_as_a_dtmf_event_and_keep_the_prompt(
    broker: MemoryBroker, router: RouterService, store: DialogStore
) -> None:
    out = await Collector.on(broker.bus("watch"), subjects.ALL_CALLS)
    await start_call(broker, store)
    await broker.bus("gateway").publish(
        subjects.asr(CALL), AsrFinal(call_id=CALL, turn_id="k1", text="1", provider="dtmf", dtmf=True)
    )
    (req,) = await out.wait(LlmRequest, turn_id="k1")
    assert (req.event, req.user_text, req.prompt_id) == ("dtmf", "1", "default")
    await say(broker, "t2", "у меня есть собака")  # words still switch topics
    (spoken,) = await out.wait(LlmRequest, turn_id="t2")
    assert spoken.event == "" and spoken.prompt_id == "pets"
