"""gateway-web over a real HTTP/WebSocket server (the service runner), the bus being the in-memory twin."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.gateway.owners import PIPELINE_ROLES
from voiceplatform.runtime import run_service
from voiceplatform.wire import AssignReply, AudioChunk, CallEnded, CallStarted, WorkerHeartbeat
from voiceplatform_devstack.devinfra import free_port
from vp_gateway_web.app import GatewayWeb
from vp_gateway_web.settings import GatewayWebSettings


@pytest.fixture
async def gateway(broker, tmp_path):
    robots = tmp_path / "robots"
    (robots / "bot").mkdir(parents=True)
    (robots / "bot" / "config.json").write_text(json.dumps({"llm": {"provider": "openai"}}))
    write_wav(robots / "bot" / "greeting.wav", (np.ones(1600) * 500).astype(np.int16), 16000)
    (robots / "broken").mkdir()
    (robots / "broken" / "config.json").write_text('{"mode": ')
    port = free_port()
    settings = GatewayWebSettings(
        robots_dir=robots, http_port=port, default_robot="bot", start_timeout_s=0.5, reconnect_grace_s=0.5
    )
    service = GatewayWeb(settings)
    workers = broker.bus("workers")
    seen: list = []

    async def assign(env: Envelope):
        return AssignReply(call_id=env.message.call_id, role=env.message.role, accepted=True, instance_id="w")

    async def record(env: Envelope):
        seen.append(env.message)

    await workers.subscribe(subjects.assign("vad"), assign, queue="vad")
    await workers.subscribe(subjects.assign("asr"), assign, queue="asr")
    await workers.subscribe(subjects.ALL_CALLS, record)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(service, settings, bus=broker.bus("gateway-web"), stop=stop))
    base = f"127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(f"http://{base}/metrics")
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.02)
    yield base, workers, seen, service
    stop.set()
    await asyncio.wait_for(task, 15)


async def page_token(base: str, robot: str = "bot") -> str:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"http://{base}/page-token", json={"robot": robot}, headers={"Origin": f"http://{base}"}
        )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


async def test_health_answers_only_when_the_whole_pipeline_is_ready(gateway):
    base, workers, _, _ = gateway
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{base}/health")
        assert r.status_code == 503 and set(r.json()["missing_services"]) == set(PIPELINE_ROLES)
        for role in PIPELINE_ROLES:
            await workers.publish(
                subjects.presence(role), WorkerHeartbeat(call_id="", role=role, instance_id=f"{role}-1")
            )
        last: list[httpx.Response] = []

        async def ready() -> bool:
            last.append(await client.get(f"http://{base}/health"))
            return last[-1].status_code == 200

        # the heartbeats reach the gateway's directory a moment later (longer on a busy machine)
        deadline = asyncio.get_running_loop().time() + 10
        while not await ready() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert last[-1].status_code == 200 and last[-1].json()["missing_services"] == []


async def test_garbage_on_the_socket_is_answered_and_the_call_goes_on(gateway):
    base, _, seen, _ = gateway
    async with connect(f"ws://{base}/ws") as ws:
        token = await page_token(base)
        await ws.send(json.dumps({"type": "start", "token": token, "robot": "bot", "sample_rate": 48000}))
        started = json.loads(await ws.recv())
        assert started["type"] == "call.started"
        await ws.send("this is not json")
        error = None
        while error is None:  # greeting audio frames arrive in between
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                error = json.loads(message)
        assert "JSON" in error["message"]
        await ws.send(b"\x01\x02\x03")  # odd byte count at 48 kHz: kept for the next chunk, no crash
        await ws.send(np.zeros(960 * 5, dtype="<i2").tobytes())  # 100 ms at 48 kHz → 5 frames at 16 kHz
        await ws.send(json.dumps({"type": "heartbeat"}))
        await wait_for(lambda: sum(isinstance(m, AudioChunk) for m in seen) >= 5)
    chunks = [m for m in seen if isinstance(m, AudioChunk)]
    assert all(c.sample_rate == 16000 and len(c.pcm) == 640 for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))


async def test_a_client_that_vanishes_mid_turn_still_gets_its_call_record(gateway):
    base, _, seen, service = gateway
    ws = await connect(f"ws://{base}/ws?robot=bot&token={await page_token(base)}")
    await ws.send(np.zeros(3200, dtype="<i2").tobytes())
    await wait_for(lambda: any(isinstance(m, CallStarted) for m in seen))
    ws.transport.abort()  # no close frame, like a dropped network
    await wait_for(lambda: any(isinstance(m, CallEnded) for m in seen))
    ended = next(m for m in seen if isinstance(m, CallEnded))
    assert ended.reason == "client_lost"  # not resumed within the grace period
    await wait_for(lambda: not service.sessions)


@pytest.mark.parametrize(
    ("robot", "needle"), [("nope", "no robot"), ("broken", "not valid JSON"), ("../x", "invalid")]
)
async def test_bad_robot_gets_a_clear_error_and_no_token(gateway, robot, needle):
    base, _, seen, _ = gateway
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"http://{base}/page-token", json={"robot": robot}, headers={"Origin": f"http://{base}"}
        )
    assert r.status_code == 400 and needle in r.json()["error"]
    async with connect(f"ws://{base}/ws") as ws:  # a token for another robot does not open this one
        await ws.send(json.dumps({"type": "start", "robot": robot, "token": await page_token(base)}))
        event = json.loads(await ws.recv())
        assert event["type"] == "error" and event["code"] == "token_wrong_robot"
        await ws.wait_closed()
        assert ws.close_code == 4401
    assert not any(isinstance(m, CallStarted) for m in seen)


async def test_unsupported_input_rate_is_refused(gateway):
    base, *_ = gateway
    async with connect(f"ws://{base}/ws") as ws:
        await ws.send(
            json.dumps(
                {"type": "start", "robot": "bot", "sample_rate": 4000, "token": await page_token(base)}
            )
        )
        event = json.loads(await ws.recv())
        assert event["type"] == "error" and "sample rate" in event["message"]


async def test_the_browser_page_and_robot_list_are_served(gateway):
    base, *_ = gateway
    async with httpx.AsyncClient() as client:
        page = await client.get(f"http://{base}/")
        client_js = await client.get(f"http://{base}/static/client.js")
        robots = await client.get(f"http://{base}/robots")
    assert page.status_code == 200 and "/static/ui.js" in page.text
    assert client_js.status_code == 200 and "javascript" in client_js.headers["content-type"]
    assert "getUserMedia" in client_js.text and "/ws" in client_js.text
    assert "playback.flush" in client_js.text  # the page drops queued robot audio on barge-in
    assert robots.json()["robots"] == ["bot", "broken"] and robots.json()["default"] == ["bot"]
