"""prompt-router + llm through a real NATS server, dialogue state in JetStream KV."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from tests.llm.helpers import Collector
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    LlmDone,
    LlmRequest,
    LlmSentence,
    PromptSwitched,
    StageError,
)
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings
from vp_router.app import RouterService
from vp_router.dialog_state import DialogState, DialogStore
from vp_router.settings import RouterSettings

ROBOTS = Path(__file__).resolve().parents[2] / "robots"


async def wait_state(
    store: DialogStore, call_id: str, ok: object, timeout_s: float = 5.0
) -> DialogState | None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await store.load(call_id)
        if ok(state):  # type: ignore[operator]
            return state
        assert time.monotonic() < deadline, f"dialog state never satisfied the check: {state}"
        await asyncio.sleep(0.02)


async def test_router_and_llm_over_nats(nats_url: str, nats_bus: NatsBus) -> None:
    router_bus = await NatsBus.connect(nats_url, "prompt-router")
    llm_bus = await NatsBus.connect(nats_url, "llm")
    router = RouterService(RouterSettings(robots_dir=ROBOTS))
    llm = LlmService(LlmSettings(robots_dir=ROBOTS))
    try:
        await router.start(router_bus)
        await llm.start(llm_bus)
        call_id = f"nats-{uuid.uuid4().hex[:12]}"
        out = await Collector.on(nats_bus, f"vp.call.{call_id}.>")
        store = await DialogStore.open(nats_bus)
        await asyncio.sleep(0.2)  # let the server register every subscription

        await nats_bus.publish(
            subjects.lifecycle(call_id),
            CallStarted(call_id=call_id, robot="topic_prompts_russian", channel="phone", sample_rate=8000),
        )
        await wait_state(store, call_id, lambda s: s is not None)
        await nats_bus.publish(
            subjects.asr(call_id),
            AsrFinal(call_id=call_id, turn_id=f"{call_id}-1", text="У меня есть собака"),
        )
        (done1,) = await out.wait(LlmDone, turn_id=f"{call_id}-1")
        (switch,) = out.of(PromptSwitched)
        assert (switch.from_prompt, switch.to_prompt) == ("default", "pets")
        sentences = out.of(LlmSentence, turn_id=f"{call_id}-1")
        assert sentences and sentences[-1].last and all(s.sample_rate == 8000 for s in sentences)
        assert "питомца" in done1.text
        await wait_state(store, call_id, lambda s: s is not None and s.turns == 1)

        # no keyword: the pets topic stays and the script answers about dog food
        await nats_bus.publish(
            subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id=f"{call_id}-2", text="А чем кормить?")
        )
        (done2,) = await out.wait(LlmDone, turn_id=f"{call_id}-2")
        (req2,) = out.of(LlmRequest, turn_id=f"{call_id}-2")
        assert req2.prompt_id == "pets" and len(req2.history) == 2
        assert "корм" in done2.text
        assert len(out.of(PromptSwitched)) == 1
        state = await wait_state(store, call_id, lambda s: s is not None and s.turns == 2)
        assert state is not None
        assert [m.role for m in state.history] == ["user", "assistant", "user", "assistant"]

        await nats_bus.publish(subjects.lifecycle(call_id), CallEnded(call_id=call_id, reason="hangup"))
        await wait_state(store, call_id, lambda s: s is None)
    finally:
        await llm.drain(1.0)
        await router.drain(1.0)
        await llm_bus.close()
        await router_bus.close()


async def test_a_transcript_before_its_call_started_waits_for_it(nats_url: str, nats_bus: NatsBus) -> None:
    """call.started held up (taken by an instance that then lost its connection: the server hands it
    to another after the ack wait): the first transcript waits for the dialogue state instead of
    failing the turn with no_dialog_state."""
    router_bus = await NatsBus.connect(nats_url, "prompt-router")
    router = RouterService(RouterSettings(robots_dir=ROBOTS))
    try:
        await router.start(router_bus)
        call_id = f"nats-{uuid.uuid4().hex[:12]}"
        out = await Collector.on(nats_bus, f"vp.call.{call_id}.>")
        await asyncio.sleep(0.2)  # let the server register every subscription
        turn_id = f"{call_id}-1"
        await nats_bus.publish(
            subjects.asr(call_id), AsrFinal(call_id=call_id, turn_id=turn_id, text="У меня собака")
        )
        await asyncio.sleep(1.5)
        await nats_bus.publish(
            subjects.lifecycle(call_id),
            CallStarted(call_id=call_id, robot="topic_prompts_russian", channel="phone", sample_rate=8000),
        )
        (req,) = await out.wait(LlmRequest, turn_id=turn_id)
        assert req.user_text == "У меня собака" and req.prompt_id == "pets"
        assert out.of(StageError) == []
    finally:
        await router.drain(1.0)
        await router_bus.close()
