"""Stage load for autoscaling (voiceplatform.load): calls owned vs capacity, a work consumer's backlog
read from the server, turn seconds; the same figures on /health."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from tests.waiting import wait_for
from voiceplatform import load, subjects
from voiceplatform.bus import Bus
from voiceplatform.bus.jetstream import StreamSpec
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.bus.work import WorkSpec, take_work
from voiceplatform.runtime.ownership import CallOwnership
from voiceplatform.runtime.service import build_http_app
from voiceplatform.wire import AssignReply, AssignRequest, LlmRequest


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_an_owner_publishes_calls_owned_out_of_its_capacity(broker: MemoryBroker) -> None:
    role = f"ld{uuid.uuid4().hex[:6]}"
    owner_bus, gateway = broker.bus("owner"), broker.bus("gateway")

    async def accept(_: AssignRequest) -> None:
        return None

    ownership = CallOwnership(owner_bus, role, "i1", max_calls=4, accept=accept)
    await ownership.start()
    try:
        assert sample("vp_stage_capacity", stage=role) == 4
        assert sample("vp_stage_calls_owned", stage=role) == 0
        for n in range(3):
            req = AssignRequest(call_id=f"c{n}", role=role, robot="r", sample_rate=8000)
            reply = await gateway.request(subjects.assign(role), req, 1.0)
            assert isinstance(reply, AssignReply) and reply.accepted
        assert sample("vp_stage_calls_owned", stage=role) == 3
        assert sample("vp_stage_load_ratio", stage=role) == pytest.approx(0.75)
        ownership.forget("c0")
        assert sample("vp_stage_load_ratio", stage=role) == pytest.approx(0.5)
        assert load.snapshot()[role] == {"calls_owned": 2, "capacity": 4, "load_ratio": 0.5}
    finally:
        await ownership.stop()


async def test_a_work_stage_reads_its_consumers_backlog(
    nats_bus: NatsBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "QUEUE_POLL_S", 0.05)
    tag = uuid.uuid4().hex[:8]
    stage, consumer = f"ldw{tag}", f"ldw{tag}-c"
    subject = f"vp.loadtest.{tag}.work"
    spec = WorkSpec(
        StreamSpec(f"VP_LOADTEST_{tag}", (subject,), max_age_s=60.0, duplicate_window_s=10.0),
        consumer,
        subject,
        stage=stage,
    )
    release = asyncio.Event()

    async def handler(_env: object, _attempt: int) -> None:
        await release.wait()

    js = nats_bus.jetstream()
    source = await take_work(nats_bus, spec, handler)
    try:
        for n in range(3):
            req = LlmRequest(
                call_id=f"c{n}",
                turn_id=f"t{n}",
                robot="r",
                prompt_id="p",
                system_prompt="",
                history=[],
                user_text="",
                sample_rate=16000,
            )
            await nats_bus.publish(subject, req)

        def depth(state: str) -> float | None:
            return sample("vp_stage_queue_depth", stage=stage, consumer=consumer, state=state)

        await wait_for(lambda: depth("ack_pending") == 3 and depth("pending") == 0, timeout=20)
        queues = load.snapshot()[stage]
        assert isinstance(queues, dict) and queues["queues"][consumer]["ack_pending"] == 3
        release.set()
        await wait_for(lambda: depth("ack_pending") == 0, timeout=20)
    finally:
        release.set()
        await source.stop(1.0)
        await js.delete_stream(spec.stream.name)


def test_turn_seconds_are_one_histogram_labelled_by_stage() -> None:
    before = sample("vp_stage_turn_seconds_count", stage="tts") or 0.0
    load.observe_turn("tts", 0.25)
    assert sample("vp_stage_turn_seconds_count", stage="tts") == before + 1
    assert load.gateway_of("phone") == "gateway-fs" and load.gateway_of("web") == "gateway-web"


class _Stage:
    name = "ld-health"

    async def start(self, bus: Bus) -> None: ...
    async def drain(self, timeout: float) -> None: ...

    def ready(self) -> bool:
        return False  # e.g. draining: not ready, still alive

    def health(self) -> dict[str, object]:
        return {}

    def asgi_app(self) -> Starlette | None:
        return None


async def test_health_carries_the_load_and_live_answers_while_not_ready() -> None:
    load.track_calls("ld-health", lambda: 1, 8)
    app = build_http_app(_Stage(), [], {"phase": "draining"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        health = await client.get("/health")
        live = await client.get("/live")
    assert health.status_code == 503
    assert health.json()["load"]["ld-health"] == {"calls_owned": 1, "capacity": 8, "load_ratio": 0.125}
    assert live.status_code == 200 and live.json() == {"service": "ld-health", "phase": "draining"}
