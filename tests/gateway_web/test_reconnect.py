"""A dropped socket: the client comes back to the live call with its resume token, or is told it ended."""

from __future__ import annotations

import json

from websockets.asyncio.client import ClientConnection, connect

from tests.gateway_web.helpers import FRAME, next_event, refusal
from tests.waiting import wait_for
from voiceplatform.web_protocol import CLOSE_GONE, CLOSE_REPLACED, CLOSE_TOKEN, RESUMED_EVENT
from voiceplatform.wire import CallEnded, CallStarted


async def resume(url: str, call_id: str, token: str) -> ClientConnection:
    ws = await connect(url)
    await ws.send(json.dumps({"type": "resume", "call_id": call_id, "resume_token": token}))
    return ws


async def test_a_client_back_within_the_grace_period_continues_the_same_call(gateway_factory):
    async with gateway_factory(reconnect_grace_s=30) as gw:
        ws, call = await gw.call()
        call_id = call["call_id"]
        for _ in range(5):
            await ws.send(FRAME)
        await wait_for(lambda: len(gw.chunks(call_id)) >= 5)
        ws.transport.abort()  # the network drops: no close frame
        await wait_for(lambda: not gw.service.calls[call_id].attached)

        back = await resume(gw.ws_url, call_id, call["resume_token"])
        resumed = await next_event(back, RESUMED_EVENT)
        assert resumed["call_id"] == call_id and resumed["resume_token"] != call["resume_token"]
        for _ in range(5):
            await back.send(FRAME)
        await wait_for(lambda: len(gw.chunks(call_id)) >= 10)
        assert [c.seq for c in gw.chunks(call_id)] == list(range(10))  # one stream, one call

        stale = await resume(gw.ws_url, call_id, call["resume_token"])  # each token works once
        event, code, _ = await refusal(stale)
        assert (event["code"], code) == ("token_forged", CLOSE_TOKEN)

        # a resume while the server still holds the old socket (a half-open one) takes the call over
        newer = await resume(gw.ws_url, call_id, resumed["resume_token"])
        await next_event(newer, RESUMED_EVENT)
        await back.wait_closed()
        assert back.close_code == CLOSE_REPLACED
        await newer.send(json.dumps({"type": "hangup"}))
        assert (await next_event(newer, "call.ended"))["reason"] == "caller_hangup"
        await wait_for(lambda: gw.lifecycle(call_id, CallEnded))
        assert len(gw.lifecycle(call_id, CallStarted)) == 1 and len(gw.lifecycle(call_id, CallEnded)) == 1


async def test_after_the_grace_period_the_call_ends_and_a_late_client_is_told(gateway_factory):
    async with gateway_factory(reconnect_grace_s=0.3) as gw:
        ws, call = await gw.call()
        call_id = call["call_id"]
        ws.transport.abort()
        await wait_for(lambda: gw.lifecycle(call_id, CallEnded), timeout=10)
        assert gw.lifecycle(call_id, CallEnded)[0].reason == "client_lost"
        late = await resume(gw.ws_url, call_id, call["resume_token"])
        event, code, reason = await refusal(late)
        assert (event["type"], event["reason"], code) == ("call.ended", "client_lost", CLOSE_GONE)
        assert reason == "ended: client_lost"
        await wait_for(lambda: not gw.service.sessions and gw.service.admission.total == 0)


async def test_a_hangup_or_a_clean_close_ends_the_call_at_once(gateway_factory):
    async with gateway_factory(reconnect_grace_s=30) as gw:
        ws, call = await gw.call()
        await ws.close()  # 1000: the caller left on purpose
        await wait_for(lambda: gw.lifecycle(call["call_id"], CallEnded))
        assert gw.lifecycle(call["call_id"], CallEnded)[0].reason == "caller_hangup"
