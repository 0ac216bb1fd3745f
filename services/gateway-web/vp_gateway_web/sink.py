"""The browser side of a call: robot audio as binary frames, events as JSON text frames.

The socket can be swapped while the call lives: a client that reconnects (resume) gets the call's
audio and events on its new socket; while none is attached (a dropped socket in its grace period),
what the robot sends is dropped.

What the caller heard (``unheard_bytes``, the session's ``PlaybackClock``): the page's playback
worklet holds a jitter buffer, and the gateway sends a few frames ahead, so audio sent is not audio
heard. The bundled client reports ``{"type": "playback", "done": N, "speaking": bool}`` about every
100 ms while the robot's voice plays and whenever it starts or stops: N is the samples (at the
call's rate) of this socket's audio that have been played or dropped (a flush). Between reports,
while it speaks, playback goes on at real time. A client that never reports (an older page, a
custom one) is taken to have heard what was sent, as before; one that stops reporting for
``STALE_S`` likewise, so no reply waits for a report that will not come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voiceplatform.web_protocol import CLOSE_NORMAL

STALE_S = 1.0  # a report this old no longer holds anything back as unheard


class WebSocketSink:
    def __init__(self, ws: WebSocket, sample_rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ws: WebSocket | None = ws
        self._lock = asyncio.Lock()  # playout and event handlers send from different tasks
        self.open = True
        self.sample_rate = sample_rate
        self._clock = clock
        self.reports = 0  # playback reports taken, on every socket of the call
        self._reset_position()

    def _reset_position(self) -> None:
        self._sent_bytes = 0  # robot audio sent on the current socket
        self._done_bytes = 0  # of it, played or dropped by the page (its last report)
        self._reported_at: float | None = None  # None: this socket's page has not reported
        self._speaking = False

    def attach(self, ws: WebSocket) -> WebSocket | None:
        """Send on ``ws`` from now on; returns the socket it replaces (if any)."""
        previous, self.ws, self.open = self.ws, ws, True
        self._reset_position()  # the page counts from its new socket (it flushed the old audio)
        return previous

    def playback_report(self, done: object, speaking: object) -> bool:
        """The page's ``playback`` event; False (and nothing changes) when it is malformed."""
        if isinstance(done, bool) or not isinstance(done, int) or done < 0 or not isinstance(speaking, bool):
            return False
        # never more than was sent, never back: a page can only say it heard what it was given
        self._done_bytes = max(self._done_bytes, min(done * 2, self._sent_bytes))
        self._speaking = speaking
        self._reported_at = self._clock()
        self.reports += 1
        return True

    def unheard_bytes(self) -> int:
        """``PlaybackClock``: robot audio sent to the page that the caller has not heard yet."""
        if self._reported_at is None:
            return 0
        since = self._clock() - self._reported_at
        if since > STALE_S:
            return 0
        done = self._done_bytes
        if self._speaking:
            done += int(since * self.sample_rate) * 2
        return max(0, self._sent_bytes - done)

    def detach(self, ws: WebSocket) -> None:
        if self.ws is ws:
            self.ws, self.open = None, False

    async def _send(self, data: bytes | str) -> bool:
        ws = self.ws
        if not self.open or ws is None or ws.application_state != WebSocketState.CONNECTED:
            return False
        async with self._lock:
            try:
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_text(data)
            except (WebSocketDisconnect, RuntimeError, OSError):
                if self.ws is ws:
                    self.open = False
                return False
        return self.ws is ws

    async def send_audio(self, pcm: bytes) -> None:
        if await self._send(pcm):
            self._sent_bytes += len(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._send(json.dumps(event, ensure_ascii=False))

    async def flush(self, turn_id: str) -> None:
        # the page drops what it holds: from now on nothing sent so far is waiting to be heard
        # (its next report, played + dropped, says the same)
        self._done_bytes = self._sent_bytes
        self._speaking = False
        await self.send_event({"type": "playback.flush", "turn_id": turn_id})

    async def close(self, reason: str) -> None:
        ws = self.ws
        if self.open and ws is not None and ws.application_state == WebSocketState.CONNECTED:
            self.open = False
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_NORMAL, reason=reason[:120])
