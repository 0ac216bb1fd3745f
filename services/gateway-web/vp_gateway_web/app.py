"""gateway-web: browsers (and `vp call`) talk to robots over a WebSocket.

Protocol on ``/ws``:
- client → server: optional first text frame ``{"type": "start", "robot": "...", "sample_rate": 16000,
  "caller": "..."}``; then binary frames of 16-bit LE mono PCM at that rate (any chunking, 8-48 kHz);
  text frames ``{"type": "heartbeat"}`` and ``{"type": "hangup"}``.
- server → client: binary frames of robot audio (16-bit LE mono, 16 kHz, 20 ms, paced in real time);
  JSON events: call.started, heartbeat, vad.speech_started, asr.final, bot.sentence, playback.flush
  (drop queued robot audio now: barge-in), turn.metrics, error, call.ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from prometheus_client import Counter

from voiceplatform import metrics
from voiceplatform.bus import Bus
from voiceplatform.clock import now_ms
from voiceplatform.config import RobotConfigError, RobotRegistry
from voiceplatform.gateway import CallSession, FrameAssembler, GatewayDirectory
from voiceplatform.logging import bind_call
from vp_gateway_web.settings import GatewayWebSettings
from vp_gateway_web.sink import WebSocketSink

log = structlog.get_logger("vp_gateway_web")
SERVICE = "gateway-web"
CALL_RATE = 16000
BAD_CLIENT_INPUT = Counter("vp_gateway_web_bad_input_total", "Client frames rejected", ["reason"])
STATIC = Path(__file__).parent / "static"


class GatewayWeb:
    name = SERVICE

    def __init__(self, settings: GatewayWebSettings) -> None:
        self.settings = settings
        self.robots = RobotRegistry(settings.robots_dir)
        self.bus: Bus | None = None
        self.directory: GatewayDirectory | None = None
        self.sessions: dict[str, CallSession] = {}
        self.accepting = True

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        self.directory = GatewayDirectory(bus)
        await self.directory.start()

    async def drain(self, timeout: float) -> None:
        """Stop taking calls; let live calls finish up to the timeout, then end them."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for session in list(self.sessions.values()):
            await session.end("gateway_shutdown")
        if self.directory is not None:
            await self.directory.stop()

    def ready(self) -> bool:
        return self.directory is not None and not self.directory.missing_roles() and self.accepting

    def health(self) -> dict[str, Any]:
        missing = self.directory.missing_roles() if self.directory else ["bus"]
        return {"active_calls": len(self.sessions), "missing_services": missing}

    def asgi_app(self) -> FastAPI:
        app = FastAPI(title="voice-platform gateway-web", docs_url=None, redoc_url=None)

        @app.get("/", response_class=HTMLResponse)
        async def index() -> str:
            return (STATIC / "index.html").read_text(encoding="utf-8")

        @app.get("/robots")
        async def robots() -> dict[str, list[str]]:
            return {"robots": self.robots.names(), "default": [self.settings.default_robot]}

        @app.websocket("/ws")
        async def ws_endpoint(ws: WebSocket) -> None:
            await self.handle(ws)

        return app

    # ---- one WebSocket = one call -------------------------------------------------------------------
    async def handle(self, ws: WebSocket) -> None:
        await ws.accept()
        sink = WebSocketSink(ws)
        if self.bus is None or not self.accepting:
            await sink.send_event({"type": "error", "message": "gateway is not accepting calls"})
            await ws.close(code=1013)
            return
        start: dict[str, Any] = {}
        first_audio: bytes | None = None
        try:
            first = await asyncio.wait_for(ws.receive(), timeout=self.settings.start_timeout_s)
            if first.get("type") == "websocket.disconnect":
                return
            if first.get("text") is not None:
                start = self._parse_json(first["text"]) or {}
            elif first.get("bytes") is not None:
                first_audio = first["bytes"]
        except TimeoutError:
            pass
        robot_name = str(start.get("robot") or ws.query_params.get("robot") or self.settings.default_robot)
        try:
            input_rate = int(start.get("sample_rate") or ws.query_params.get("sample_rate") or CALL_RATE)
            assembler = FrameAssembler(input_rate, CALL_RATE)
            robot = self.robots.get(robot_name)
        except (ValueError, RobotConfigError) as exc:
            BAD_CLIENT_INPUT.labels("bad_start").inc()
            await sink.send_event({"type": "error", "message": str(exc)})
            await ws.close(code=1008, reason="bad start")
            return
        session = CallSession(
            self.bus,
            robot,
            channel="web",
            sample_rate=CALL_RATE,
            sink=sink,
            directory=self.directory,
            caller=str(start.get("caller", ""))[:64],
            gateway_id=self.settings.instance_id,
        )
        self.sessions[session.call_id] = session
        with bind_call(call_id=session.call_id):
            heartbeat = asyncio.create_task(self._heartbeat(sink))
            try:
                await session.start()
                if first_audio:
                    await self._audio(session, assembler, first_audio)
                await self._receive_loop(ws, session, assembler)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await session.end(session.end_reason or "caller_hangup")
                self.sessions.pop(session.call_id, None)

    async def _receive_loop(self, ws: WebSocket, session: CallSession, assembler: FrameAssembler) -> None:
        while not session.ended:
            try:
                message = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                session.end_reason = session.end_reason or "caller_hangup"
                return
            if message.get("type") == "websocket.disconnect":
                session.end_reason = session.end_reason or "caller_hangup"
                return
            data = message.get("bytes")
            if data is not None:
                if len(data) > self.settings.max_message_bytes:
                    BAD_CLIENT_INPUT.labels("too_large").inc()
                    continue
                await self._audio(session, assembler, data)
                continue
            event = self._parse_json(message.get("text") or "")
            if event is None:
                await session.sink.send_event(
                    {"type": "error", "message": "text frames must be JSON objects"}
                )
                continue
            kind = event.get("type")
            if kind == "heartbeat":
                await session.sink.send_event({"type": "heartbeat_ack", "ts_ms": now_ms()})
            elif kind == "hangup":
                session.end_reason = "caller_hangup"
                return
            elif kind != "start":
                BAD_CLIENT_INPUT.labels("unknown_event").inc()

    async def _audio(self, session: CallSession, assembler: FrameAssembler, data: bytes) -> None:
        metrics.FRAMES_IN.labels(SERVICE).inc()
        for frame in assembler.push(data):
            await session.push_audio(frame)

    @staticmethod
    def _parse_json(text: str) -> dict[str, Any] | None:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            BAD_CLIENT_INPUT.labels("not_json").inc()
            return None
        if not isinstance(value, dict):
            BAD_CLIENT_INPUT.labels("not_object").inc()
            return None
        return value

    async def _heartbeat(self, sink: WebSocketSink) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await sink.send_event({"type": "heartbeat", "ts_ms": now_ms()})


def build() -> tuple[GatewayWeb, GatewayWebSettings]:
    settings = GatewayWebSettings()
    return GatewayWeb(settings), settings
