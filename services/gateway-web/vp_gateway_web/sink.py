"""The browser side of a call: robot audio as binary frames, events as JSON text frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState


class WebSocketSink:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()  # playout and event handlers send from different tasks
        self.open = True

    async def _send(self, data: bytes | str) -> None:
        if not self.open or self.ws.application_state != WebSocketState.CONNECTED:
            return
        async with self._lock:
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_text(data)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.open = False

    async def send_audio(self, pcm: bytes) -> None:
        await self._send(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._send(json.dumps(event, ensure_ascii=False))

    async def flush(self, turn_id: str) -> None:
        await self.send_event({"type": "playback.flush", "turn_id": turn_id})

    async def close(self, reason: str) -> None:
        if self.open and self.ws.application_state == WebSocketState.CONNECTED:
            self.open = False
            with contextlib.suppress(Exception):
                await self.ws.close(code=1000, reason=reason[:120])
