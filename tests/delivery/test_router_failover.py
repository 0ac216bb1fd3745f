"""A caller turn (asr.final) taken by a router instance that dies is routed by another, once; a
turn routed twice (a slow original and its retry) is one user message and one llm.request."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from tests.delivery.helpers import until
from tests.llm.helpers import Collector
from tests.router.test_router_llm_nats import wait_state
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.streams import WORK, stream_for
from voiceplatform.wire import AsrFinal, CallStarted, LlmRequest
from vp_router.app import RouterService
from vp_router.dialog_state import DialogStore
from vp_router.routing import Route
from vp_router.settings import RouterSettings

ROBOTS = Path(__file__).resolve().parents[2] / "robots"
ROBOT = "topic_prompts_russian"


def user_turns(state: object) -> list[str]:
    history = getattr(state, "history", [])
    return [m.turn_id for m in history if m.role == "user"]


async def test_a_turn_of_a_dead_router_is_routed_once_by_another(private_nats: str) -> None:
    call_id = f"rt-{uuid.uuid4().hex[:8]}"
    bus = await NatsBus.connect(private_nats, "test")
    first_bus = await NatsBus.connect(private_nats, "prompt-router-a")
    second_bus = await NatsBus.connect(private_nats, "prompt-router-b")
    first = RouterService(RouterSettings(robots_dir=ROBOTS))
    second = RouterService(RouterSettings(robots_dir=ROBOTS))
    hang = asyncio.Event()
    try:
        await first.start(first_bus)
        out = await Collector.on(bus, f"vp.call.{call_id}.>")
        store = await DialogStore.open(bus)
        await bus.publish(
            subjects.lifecycle(call_id),
            CallStarted(call_id=call_id, robot=ROBOT, channel="phone", sample_rate=8000),
        )
        await wait_state(store, call_id, lambda s: s is not None, timeout_s=30)

        async def stuck(call_id: str, text: str) -> Route | None:
            await hang.wait()  # the instance took the turn and never gets further
            return None

        first._classify = stuck  # type: ignore[method-assign]
        await bus.publish(
            subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id="t1", text="У меня есть собака")
        )
        await until(lambda: sum(w.in_flight for w in first._work) == 1, what="the first router taking it")
        await second.start(second_bus)
        await first_bus.close()  # dies with the turn in hand

        (req,) = await out.wait(LlmRequest, turn_id="t1", timeout_s=30)
        assert req.user_text == "У меня есть собака" and req.prompt_id == "pets"
        state = await wait_state(store, call_id, lambda s: s is not None and user_turns(s) == ["t1"])
        assert state is not None and state.prompt_id == "pets"
        await asyncio.sleep(0.3)
        assert len(out.of(LlmRequest)) == 1
    finally:
        hang.set()
        await second.drain(1.0)
        await first.drain(1.0)
        await second_bus.close()
        await bus.close()


async def test_a_turn_routed_twice_is_one_user_message_and_one_llm_request(private_nats: str) -> None:
    call_id = f"rt-{uuid.uuid4().hex[:8]}"
    bus = await NatsBus.connect(private_nats, "test")
    router_bus = await NatsBus.connect(private_nats, "prompt-router")
    router = RouterService(RouterSettings(robots_dir=ROBOTS))
    try:
        await router.start(router_bus)
        js = bus.jetstream()
        work = await stream_for(js, WORK)
        out = await Collector.on(bus, f"vp.call.{call_id}.>")
        store = await DialogStore.open(bus)
        await bus.publish(
            subjects.lifecycle(call_id),
            CallStarted(call_id=call_id, robot=ROBOT, channel="phone", sample_rate=8000),
        )
        await wait_state(store, call_id, lambda s: s is not None, timeout_s=30)
        said = AsrFinal(call_id=call_id, turn_id="t1", text="У меня есть собака")
        await bus.publish(subjects.asr(call_id), said)
        await bus.publish(subjects.asr(call_id), said)  # a redelivery looks exactly like this

        first, again = await out.wait(LlmRequest, count=2, turn_id="t1", timeout_s=30)
        assert again.history == first.history and again.prompt_id == first.prompt_id == "pets"
        state = await store.load(call_id)
        assert state is not None and user_turns(state) == ["t1"]
        info = await js.stream_info(work)
        assert info.state.messages == 1  # the workers' stream kept one llm.request for the turn
    finally:
        await router.drain(1.0)
        await router_bus.close()
        await bus.close()
