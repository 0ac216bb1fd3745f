"""Limits on calls: concurrent calls (busy), idle and length limits, bounded JSON, real-time audio."""

from __future__ import annotations

import json

import httpx
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect

from tests.gateway_web.helpers import FRAME, next_event, refusal
from tests.waiting import wait_for
from voiceplatform.web_protocol import BUSY_EVENT, CLOSE_BUSY
from voiceplatform.wire import CallEnded


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_at_the_limit_callers_hear_busy_and_admitted_calls_go_on(gateway_factory):
    async with gateway_factory(max_calls=2, max_calls_per_robot=1) as gw:
        busy_before = counter("vp_gateway_web_admission_total", outcome="busy_robot") + counter(
            "vp_gateway_web_admission_total", outcome="busy_gateway"
        )
        first, one = await gw.call("bot")

        async def offer(robot: str) -> tuple[dict, int | None, str]:
            ws = await connect(gw.ws_url)
            await ws.send(json.dumps({"type": "start", "robot": robot, "token": await gw.page_token(robot)}))
            return await refusal(ws)

        robot_busy, robot_code, _ = await offer("bot")  # one call per robot
        second, two = await gw.call("bot2")  # another robot still gets in
        gateway_busy, gateway_code, reason = await offer("bot2")  # two calls per gateway
        assert (robot_busy["type"], robot_busy["scope"], robot_code) == (BUSY_EVENT, "robot", CLOSE_BUSY)
        assert (gateway_busy["scope"], gateway_code, reason) == ("gateway", CLOSE_BUSY, "busy")
        assert "busy" in gateway_busy["message"]
        busy_after = counter("vp_gateway_web_admission_total", outcome="busy_robot") + counter(
            "vp_gateway_web_admission_total", outcome="busy_gateway"
        )
        assert busy_after - busy_before == 2
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://{gw.base}/health")).json()
        assert health["active_calls"] == 2 and health["max_calls"] == 2
        # the load an autoscaler reads (voiceplatform.load): calls owned out of capacity
        assert health["load"]["gateway-web"] == {"calls_owned": 2, "capacity": 2, "load_ratio": 1.0}
        for ws in (first, second):  # the admitted calls still take audio
            for _ in range(5):
                await ws.send(FRAME)
        await wait_for(lambda: len(gw.chunks(one["call_id"])) >= 5 and len(gw.chunks(two["call_id"])) >= 5)
        await first.send(json.dumps({"type": "hangup"}))
        await next_event(first, "call.ended")
        await wait_for(lambda: gw.service.admission.total == 1)
        again, _ = await gw.call("bot")  # a freed slot is taken again
        await again.close()
        await second.close()


async def test_a_silent_socket_is_ended_as_idle(gateway_factory):
    async with gateway_factory(idle_timeout_s=0.5) as gw:
        ws, call = await gw.call()
        ended = await next_event(ws, "call.ended")
        assert ended["reason"] == "idle_timeout"
        await wait_for(lambda: gw.lifecycle(call["call_id"], CallEnded))
        assert gw.lifecycle(call["call_id"], CallEnded)[0].reason == "idle_timeout"
        await wait_for(lambda: not gw.service.sessions and gw.service.admission.total == 0)


async def test_a_call_ends_at_the_gateways_maximum_length(gateway_factory):
    async with gateway_factory(max_call_s=0.5) as gw:
        ws, _ = await gw.call()
        for _ in range(10):
            await ws.send(FRAME)
        ended = await next_event(ws, "call.ended")
        assert ended["reason"] == "max_duration"


async def test_a_nested_json_bomb_and_oversized_frames_get_errors_and_the_call_goes_on(gateway_factory):
    async with gateway_factory(max_message_bytes=4096) as gw:
        ws, call = await gw.call()
        for depth, needle in [(5000, "limited to 8192 bytes"), (3000, "nesting is limited to 8")]:
            await ws.send('{"type":"hangup","x":' + "[" * depth + "]" * depth + "}")  # the measured bomb
            assert needle in (await next_event(ws, "error"))["message"]
        await ws.send(json.dumps({"type": "heartbeat", "pad": "x" * 20000}))
        assert "limited to 8192 bytes" in (await next_event(ws, "error"))["message"]
        await ws.send(b"\x00" * 8000)
        assert "limited to 4096 bytes" in (await next_event(ws, "error"))["message"]
        await ws.send('"just a string"')
        assert "JSON objects" in (await next_event(ws, "error"))["message"]
        for _ in range(5):
            await ws.send(FRAME)
        await ws.send(json.dumps({"type": "heartbeat"}))
        await next_event(ws, "heartbeat_ack")
        await wait_for(lambda: len(gw.chunks(call["call_id"])) >= 5)
        assert not gw.lifecycle(call["call_id"], CallEnded)
        await ws.send(json.dumps({"type": "hangup"}))
        assert (await next_event(ws, "call.ended"))["reason"] == "caller_hangup"


async def test_audio_faster_than_real_time_is_dropped_and_counted(gateway_factory):
    async with gateway_factory(audio_burst_s=0.2) as gw:
        before = counter("vp_gateway_web_bad_input_total", reason="audio_too_fast")
        ws, call = await gw.call()
        sent = 150  # 3 s of audio at once: 0.2 s burst plus the little real time that passes
        for _ in range(sent):
            await ws.send(FRAME)
        assert "faster than real time" in (await next_event(ws, "error"))["message"]
        await ws.send(json.dumps({"type": "heartbeat"}))
        await next_event(ws, "heartbeat_ack")  # every frame before it was handled
        dropped = counter("vp_gateway_web_bad_input_total", reason="audio_too_fast") - before
        await wait_for(lambda: len(gw.chunks(call["call_id"])) >= sent - dropped)
        assert dropped > 0 and len(gw.chunks(call["call_id"])) == sent - dropped
        assert not gw.lifecycle(call["call_id"], CallEnded)  # dropped, not ended
