"""Helpers for gateway-web tests: the gateway under test and a client's view of its socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from voiceplatform.bus import Bus
from voiceplatform.runtime import run_service
from voiceplatform.wire import AudioChunk
from vp_gateway_web.app import GatewayWeb
from vp_gateway_web.settings import GatewayWebSettings

FRAME = np.zeros(320, dtype="<i2").tobytes()  # 20 ms of silence at 16 kHz


@dataclass
class Gateway:
    base: str
    service: GatewayWeb
    seen: list[Any] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.base}/ws"

    def chunks(self, call_id: str) -> list[AudioChunk]:
        return [m for m in self.seen if isinstance(m, AudioChunk) and m.call_id == call_id]

    def lifecycle(self, call_id: str, kind: type) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind) and m.call_id == call_id]

    async def page_token(self, robot: str = "bot") -> str:
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"http://{self.base}/page-token",
                json={"robot": robot},
                headers={"Origin": f"http://{self.base}"},
            )
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    async def call(
        self, robot: str = "bot", token: str | None = None
    ) -> tuple[ClientConnection, dict[str, Any]]:
        """Open a call; returns the socket and its call.resumable event (call id, resume token)."""
        ws = await connect(self.ws_url, max_size=2**22)
        start = {"type": "start", "robot": robot, "token": token or await self.page_token(robot)}
        await ws.send(json.dumps(start))
        started = await next_event(ws, "call.started")
        resumable = await next_event(ws, "call.resumable")
        assert resumable["call_id"] == started["call_id"]
        return ws, resumable


async def next_event(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next JSON event of ``kind`` (robot audio and other events in between are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str) and (event := json.loads(message))["type"] == kind:
                return dict(event)


async def refusal(ws: ClientConnection) -> tuple[dict[str, Any], int | None, str]:
    """The event a refused socket gets, then its close code and reason."""
    event = json.loads(await ws.recv())
    await ws.wait_closed()
    return dict(event), ws.close_code, ws.close_reason or ""


@asynccontextmanager
async def serving(gateway: Gateway, settings: GatewayWebSettings, workers: Bus) -> AsyncIterator[Gateway]:
    """Run ``gateway.service`` until its HTTP port answers and its bus is up; stop it and close the
    stand-in ``workers`` afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(gateway.service, settings, stop=stop))
    async with httpx.AsyncClient() as client:
        for _ in range(500):
            try:
                await client.get(f"http://{gateway.base}/metrics")
                if gateway.service.bus is not None:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await workers.close()
