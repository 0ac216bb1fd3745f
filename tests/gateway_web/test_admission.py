"""Who may open a call on gateway-web: signed single-use tokens, the Origin allow-list, the API key."""

from __future__ import annotations

import json
import time

import httpx
from websockets.asyncio.client import connect

from tests.gateway_web.helpers import FRAME, next_event, refusal
from tests.waiting import wait_for
from voiceplatform.web_protocol import CLOSE_ORIGIN, CLOSE_TOKEN
from voiceplatform.wire import CallStarted
from vp_gateway_web.tokens import CallTokens


async def test_missing_forged_expired_and_reused_tokens_are_refused(gateway_factory):
    async with gateway_factory() as gw:
        other_key = CallTokens("another gateway's secret, 32 bytes or more", 60).issue("bot")
        expired = gw.service.tokens.issue("bot", now=time.time() - 3600)
        used = await gw.page_token()
        ws, _ = await gw.call(token=used)  # the first use opens a call
        await ws.close()
        for token, reason in [
            ("", "missing"),
            ("not.a.token", "forged"),
            (other_key, "forged"),
            (expired, "expired"),
            (used, "reused"),
        ]:
            async with connect(gw.ws_url) as client:
                await client.send(json.dumps({"type": "start", "robot": "bot", "token": token}))
                event, code, close_reason = await refusal(client)
            assert (event["type"], event["code"], code) == ("error", f"token_{reason}", CLOSE_TOKEN), token
            assert close_reason == f"token {reason}" and event["message"]
        await wait_for(lambda: not gw.service.sessions)
        assert len([m for m in gw.seen if isinstance(m, CallStarted)]) == 1  # only the valid token's call


async def test_a_token_in_the_query_works_as_in_the_start_message(gateway_factory):
    async with gateway_factory() as gw:
        token = await gw.page_token()
        async with connect(f"{gw.ws_url}?token={token}") as ws:
            await ws.send(FRAME)  # no start message: audio first
            started = await next_event(ws, "call.started")
            await wait_for(lambda: len(gw.chunks(started["call_id"])) >= 1)


async def test_a_page_from_another_origin_gets_neither_a_token_nor_a_socket(gateway_factory):
    async with gateway_factory(allowed_origins="https://shop.example") as gw:
        async with httpx.AsyncClient() as client:
            evil = await client.post(
                f"http://{gw.base}/page-token",
                json={"robot": "bot"},
                headers={"Origin": "https://evil.example"},
            )
            no_origin = await client.post(f"http://{gw.base}/page-token", json={"robot": "bot"})
            listed = await client.post(
                f"http://{gw.base}/page-token",
                json={"robot": "bot"},
                headers={"Origin": "https://shop.example"},
            )
        assert evil.status_code == 403 and no_origin.status_code == 403 and listed.status_code == 200
        token = await gw.page_token()
        ws = await connect(gw.ws_url, origin="https://evil.example")  # type: ignore[arg-type]
        event, code, reason = await refusal(ws)  # refused before it says anything
        assert (event["code"], code, reason) == ("origin", CLOSE_ORIGIN, "origin not allowed")
        async with connect(gw.ws_url, origin="https://shop.example") as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"type": "start", "robot": "bot", "token": token}))
            await next_event(ws, "call.started")  # the same token was not spent by the refused socket


async def test_the_site_endpoint_needs_the_api_key(gateway_factory):
    async with gateway_factory(web_api_key="site-key-123") as gw:
        url = f"http://{gw.base}/tokens"
        async with httpx.AsyncClient() as client:
            missing = await client.post(url, json={"robot": "bot2"})
            wrong = await client.post(url, json={"robot": "bot2"}, headers={"Authorization": "Bearer nope"})
            right = await client.post(
                url,
                json={"robot": "bot2", "caller": "user-42"},
                headers={"Authorization": "Bearer site-key-123"},
            )
        assert missing.status_code == 401 and wrong.status_code == 401 and right.status_code == 200
        assert right.json()["robot"] == "bot2" and right.json()["expires_in"] == 60
        token = right.json()["token"]
        async with connect(f"{gw.ws_url}?token={token}") as ws:  # the robot comes from the token
            await ws.send(FRAME)
            started = await next_event(ws, "call.started")
        assert started["robot"] == "bot2"
        await wait_for(lambda: gw.lifecycle(started["call_id"], CallStarted))
        assert gw.lifecycle(started["call_id"], CallStarted)[0].caller == "user-42"
    async with gateway_factory() as gw, httpx.AsyncClient() as client:  # no key configured: off
        r = await client.post(f"http://{gw.base}/tokens", headers={"Authorization": "Bearer x"})
        assert r.status_code == 503 and "VP_WEB_API_KEY" in r.json()["error"]
