"""End to end: a browser-protocol call through the real gateway-web is recorded by the gateway, the
recorder (same NATS, same recordings folder) lists and serves the file, and the console plays it."""

from __future__ import annotations

import asyncio
import io
import json
import wave

import httpx
import numpy as np
import pytest

from tests.console.browser import ConsoleBrowser
from tests.console.conftest import Console
from tests.gateway_web.conftest import gateway_factory, robots  # noqa: F401  (fixtures)
from tests.gateway_web.helpers import Gateway
from tests.recorder.conftest import OPERATOR_TOKEN, READONLY_TOKEN
from tests.waiting import wait_for
from voiceplatform.gateway.turns import TurnState
from voiceplatform.wire import CallRecording

CALLER = np.full(320, 1200, dtype="<i2").tobytes()  # 20 ms at 16 kHz


@pytest.fixture
def private_nats(js_nats_url: str) -> str:
    """gateway-web on the recorder's JetStream NATS (the gateway tests' own fixture, redirected)."""
    return js_nats_url


async def test_a_web_call_is_recorded_served_and_played(
    console: Console,
    browser: ConsoleBrowser,
    gateway_factory,  # noqa: F811
) -> None:
    gw: Gateway
    async with gateway_factory(recordings_dir=console.recordings) as gw:
        ws, resumable = await gw.call()
        call_id = resumable["call_id"]
        for _ in range(50):  # a second of the caller
            await ws.send(CALLER)
        greeting = gw.service.sessions[call_id].turns.get(f"{call_id}-greeting")
        await wait_for(lambda: greeting is not None and greeting.state is TurnState.DONE)
        await ws.send(json.dumps({"type": "hangup"}))
        await wait_for(lambda: len(gw.lifecycle(call_id, CallRecording)) == 2)

    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with httpx.AsyncClient(base_url=console.base, headers=headers) as client:

        async def listed() -> bool:
            found = (await client.get(f"/calls/{call_id}/recordings")).json().get("recordings") or []
            return bool(found) and found[0]["url"] is not None

        for _ in range(200):  # the recorder writes the call's events to PostgreSQL
            if await listed():
                break
            await asyncio.sleep(0.05)
        assert await listed()
        served = await client.get(f"/calls/{call_id}/recording")
        refused = await client.get(
            f"/calls/{call_id}/recording", headers={"Authorization": f"Bearer {READONLY_TOKEN}"}
        )
    assert served.status_code == 200 and refused.status_code == 403
    with wave.open(io.BytesIO(served.content), "rb") as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.count_nonzero(frames[0::2] == 1200) == 50 * 320  # the caller, left
    assert np.count_nonzero(frames[1::2] == 500) == 1600  # the robot's greeting.wav, right

    await browser.goto(f"{console.base}/console/?token={OPERATOR_TOKEN}#/call/{call_id}")
    await browser.view_ready("call")
    await browser.until("(a => a && a.duration > 0)(document.querySelector('#recording audio'))")
    await browser.js("document.querySelector('#recording audio').play().then(() => true)")
    await browser.until("document.querySelector('#recording audio').currentTime > 0.2")
