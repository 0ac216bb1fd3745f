"""The browser side of a call: robot audio as binary frames, events as JSON text frames.

The socket can be swapped while the call lives: a client that reconnects (resume) gets the call's
audio and events on its new socket; while none is attached (a dropped socket in its grace period),
what the robot sends is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voiceplatform.web_protocol import CLOSE_NORMAL


class WebSocketSink:
    def __init__(self, ws: WebSocket) -> None:
        self.ws: WebSocket | None = ws
        self._lock = asyncio.Lock()  # playout and event handlers send from different tasks
        self.open = True

    def attach(self, ws: WebSocket) -> WebSocket | None:
        """Send on ``ws`` from now on; returns the socket it replaces (if any)."""
        previous, self.ws, self.open = self.ws, ws, True
        return previous

    def detach(self, ws: WebSocket) -> None:
        if self.ws is ws:
            self.ws, self.open = None, False

    async def _send(self, data: bytes | str) -> None:
        ws = self.ws
        if not self.open or ws is None or ws.application_state != WebSocketState.CONNECTED:
            return
        async with self._lock:
            try:
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_text(data)
            except (WebSocketDisconnect, RuntimeError, OSError):
                if self.ws is ws:
                    self.open = False

    async def send_audio(self, pcm: bytes) -> None:
        await self._send(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._send(json.dumps(event, ensure_ascii=False))

    async def flush(self, turn_id: str) -> None:
        await self.send_event({"type": "playback.flush", "turn_id": turn_id})

    async def close(self, reason: str) -> None:
        ws = self.ws
        if self.open and ws is not None and ws.application_state == WebSocketState.CONNECTED:
            self.open = False
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_NORMAL, reason=reason[:120])
