"""gateway-web: browsers (and `vp call`) talk to robots over a WebSocket.

Protocol on ``/ws`` (close codes in ``voiceplatform.web_protocol``; docs/operations.md):
- client → server: first text frame ``{"type": "start", "token": "...", "robot": "...",
  "sample_rate": 16000, "caller": "..."}`` (the token may be the ``token`` query parameter instead;
  it comes from POST /tokens with the site's API key, or POST /page-token for the bundled page), or
  ``{"type": "resume", "call_id": "...", "resume_token": "..."}`` to continue a call whose socket
  dropped; then binary frames of 16-bit LE mono PCM at that rate (any chunking, 8-48 kHz, no faster
  than real time plus a burst); text frames ``{"type": "heartbeat"}``, ``{"type": "hangup"}`` and
  ``{"type": "dtmf", "digits": "1#"}`` (keypad keys, as a phone's DTMF).
- server → client: binary frames of robot audio (16-bit LE mono, 16 kHz, 20 ms, paced in real time);
  JSON events: call.started, call.resumable / call.resumed (the resume token), busy, heartbeat,
  vad.speech_started, asr.final, bot.sentence (the greeting's too), playback.flush (drop queued
  robot audio now: barge-in), reply.cut (what was heard of a stopped reply), prompt.switched,
  turn.metrics, error (stage, kind, detail), call.ended. docs/protocols/web-client.md for clients.
- ``/static/``: the bundled page's modules (client.js is the part a site copies).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter

from voiceplatform import load, metrics, web_protocol
from voiceplatform.bus import Bus
from voiceplatform.clock import now_ms
from voiceplatform.config import RobotConfigError, RobotRegistry
from voiceplatform.gateway import CallSession, FrameAssembler, GatewayDirectory
from voiceplatform.logging import bind_call
from vp_gateway_web.calls import Admission, EndedCalls, WebCall
from vp_gateway_web.guard import AudioRate, BadMessage, OriginPolicy, parse_event
from vp_gateway_web.settings import GatewayWebSettings
from vp_gateway_web.sink import WebSocketSink
from vp_gateway_web.token_api import token_routes
from vp_gateway_web.tokens import CallTokens, TokenError

log = structlog.get_logger("vp_gateway_web")
SERVICE = "gateway-web"
CALL_RATE = 16000
BAD_CLIENT_INPUT = Counter("vp_gateway_web_bad_input_total", "Client frames rejected", ["reason"])
ADMISSION = Counter("vp_gateway_web_admission_total", "WebSocket calls by admission outcome", ["outcome"])
AUDIO_DROPPED = Counter(
    "vp_gateway_web_audio_dropped_seconds_total", "Caller audio beyond real time, dropped"
)
STATIC = Path(__file__).parent / "static"
HANGUP_CLOSE_CODES = (1000, 1001)  # the client closed on purpose; anything else is a dropped socket
MAX_KEYS_PER_EVENT = 32  # a "dtmf" text frame: more keys than a caller types at once are ignored


class GatewayWeb:
    name = SERVICE

    def __init__(self, settings: GatewayWebSettings) -> None:
        self.settings = settings
        self.robots = RobotRegistry(settings.robots_dir)
        self.bus: Bus | None = None
        self.directory: GatewayDirectory | None = None
        self.sessions: dict[str, CallSession] = {}
        self.calls: dict[str, WebCall] = {}
        self.accepting = True
        secret = settings.web_token_secret
        self.tokens = CallTokens(secret.get_secret_value() if secret else None, settings.call_token_ttl_s)
        self.origins = OriginPolicy(settings.allowed_origins, settings.allow_localhost_origins)
        self.admission = Admission(settings.max_calls, settings.max_calls_per_robot)
        self.ended = EndedCalls()

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        self.directory = GatewayDirectory(bus)
        await self.directory.start()
        load.track_calls(SERVICE, lambda: len(self.sessions), self.settings.max_calls)
        await asyncio.to_thread(self.robots.load_all)  # checked before the first call (robot.invalid)

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
        return {
            "active_calls": len(self.sessions),
            "max_calls": self.settings.max_calls,
            "missing_services": missing,
        }

    def asgi_app(self) -> FastAPI:
        app = FastAPI(title="voice-platform gateway-web", docs_url=None, redoc_url=None)

        @app.get("/", response_class=HTMLResponse)
        async def index() -> str:
            return (STATIC / "index.html").read_text(encoding="utf-8")

        @app.get("/robots")
        async def robots() -> dict[str, list[str]]:
            return {"robots": self.robots.names(), "default": [self.settings.default_robot]}

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        for path, endpoint in token_routes(self):
            app.add_api_route(path, endpoint, methods=["POST"])

        @app.websocket("/ws")
        async def ws_endpoint(ws: WebSocket) -> None:
            await self.handle(ws)

        return app

    # ---- one WebSocket: a new call, or a resumed one -----------------------------------------------
    async def handle(self, ws: WebSocket) -> None:
        await ws.accept()
        sink = WebSocketSink(ws, CALL_RATE)
        if not self.origins.allowed(ws.headers.get("origin"), ws.headers.get("host")):
            ADMISSION.labels("origin_refused").inc()
            event = {"type": "error", "code": "origin", "message": "this page's origin is not allowed"}
            await self._refuse(ws, web_protocol.CLOSE_ORIGIN, "origin not allowed", event)
            return
        if self.bus is None or not self.accepting:
            await sink.send_event({"type": "error", "message": "gateway is not accepting calls"})
            await ws.close(code=web_protocol.CLOSE_NOT_ACCEPTING)
            return
        start: dict[str, Any] = {}
        first_audio: bytes | None = None
        try:
            first = await asyncio.wait_for(ws.receive(), timeout=self.settings.start_timeout_s)
            if first.get("type") == "websocket.disconnect":
                return
            if first.get("text") is not None:
                start = parse_event(first["text"], self.settings.max_text_bytes, self.settings.max_json_depth)
            elif first.get("bytes") is not None:
                first_audio = first["bytes"]
        except TimeoutError:
            pass
        except BadMessage as exc:
            BAD_CLIENT_INPUT.labels(exc.reason).inc()
            await sink.send_event({"type": "error", "message": str(exc)})
        if start.get("type") == "resume":
            await self._resume(ws, start)
            return
        await self._new_call(ws, sink, start, first_audio)

    async def _refuse(self, ws: WebSocket, close_code: int, close_reason: str, event: dict[str, Any]) -> None:
        """Tell the client why (a JSON event it can show), then close with a code of web_protocol."""
        with contextlib.suppress(Exception):
            await ws.send_json(event)
            await ws.close(code=close_code, reason=close_reason)

    async def _new_call(
        self, ws: WebSocket, sink: WebSocketSink, start: dict[str, Any], first_audio: bytes | None
    ) -> None:
        assert self.bus is not None
        named = str(start.get("robot") or ws.query_params.get("robot") or "")
        try:
            grant = self.tokens.redeem(
                str(start.get("token") or ws.query_params.get("token") or ""), named or None
            )
        except TokenError as exc:
            ADMISSION.labels(f"token_{exc.reason}").inc()
            event = {"type": "error", "code": f"token_{exc.reason}", "message": str(exc)}
            await self._refuse(ws, web_protocol.CLOSE_TOKEN, f"token {exc.reason}", event)
            return
        robot_name = grant["robot"]
        try:
            input_rate = int(start.get("sample_rate") or ws.query_params.get("sample_rate") or CALL_RATE)
            assembler = FrameAssembler(input_rate, CALL_RATE)
            robot = self.robots.get(robot_name, new_call=True)
        except (ValueError, RobotConfigError) as exc:
            BAD_CLIENT_INPUT.labels("bad_start").inc()
            await self._refuse(
                ws, web_protocol.CLOSE_BAD_START, "bad start", {"type": "error", "message": str(exc)}
            )
            return
        full = self.admission.admit(robot_name)
        if full is not None:
            ADMISSION.labels(f"busy_{full}").inc()
            log.warning("call.busy", scope=full, robot=robot_name, active=self.admission.total)
            message = "all lines are busy, please call again later"
            event = {"type": web_protocol.BUSY_EVENT, "scope": full, "message": message}
            await self._refuse(ws, web_protocol.CLOSE_BUSY, "busy", event)
            return
        ADMISSION.labels("admitted").inc()
        session = CallSession(
            self.bus,
            robot,
            channel="web",
            sample_rate=CALL_RATE,
            sink=sink,
            directory=self.directory,
            caller=(grant["caller"] or str(start.get("caller", "")))[:64],
            gateway_id=self.settings.instance_id,
            recordings_dir=self.settings.recordings_dir,
            clock=sink,  # what the page reports it played (sink.py)
        )
        call = WebCall(
            session, sink, assembler, AudioRate(input_rate * 2, self.settings.audio_burst_s), robot_name
        )
        self.sessions[session.call_id] = session
        self.calls[session.call_id] = call
        call.reaper = asyncio.create_task(self._reap(call), name=f"{session.call_id}-reap")
        with bind_call(call_id=session.call_id):
            try:
                await session.start()
            except BaseException:
                await session.end("gateway_error")
                raise
            call.start_watchdog(self.settings.idle_timeout_s, self.settings.max_call_s)
            if self.settings.reconnect_grace_s > 0:
                await sink.send_event(self._resume_event(web_protocol.RESUMABLE_EVENT, call))
            if first_audio:
                await self._audio(call, first_audio)
            await self._serve(ws, call)

    def _resume_event(self, kind: str, call: WebCall) -> dict[str, Any]:
        return {
            "type": kind,
            "call_id": call.call_id,
            "resume_token": call.resume_token,
            "grace_s": self.settings.reconnect_grace_s,
        }

    async def _resume(self, ws: WebSocket, event: dict[str, Any]) -> None:
        call_id = str(event.get("call_id", ""))[:64]
        call = self.calls.get(call_id)
        if call is None or call.session.ended:
            reason = call.session.end_reason if call is not None else self.ended.get(call_id)
            ADMISSION.labels("resume_gone").inc()
            message = f"the call has ended ({reason})"
            event = {"type": "call.ended", "call_id": call_id, "reason": reason, "message": message}
            await self._refuse(ws, web_protocol.CLOSE_GONE, f"ended: {reason}", event)
            return
        if self.settings.reconnect_grace_s <= 0 or not call.spend_resume_token(
            str(event.get("resume_token", ""))
        ):
            ADMISSION.labels("resume_refused").inc()
            event = {"type": "error", "code": "token_forged", "message": "the resume token is not valid"}
            await self._refuse(ws, web_protocol.CLOSE_TOKEN, "token forged", event)
            return
        ADMISSION.labels("resumed").inc()
        previous = call.sink.attach(ws)
        call.cancel_grace()
        call.last_audio = time.monotonic()
        with bind_call(call_id=call_id):
            log.info("call.resumed", replaced=previous is not None)
            if previous is not None and previous is not ws:
                with contextlib.suppress(Exception):
                    await previous.close(code=web_protocol.CLOSE_REPLACED, reason="resumed elsewhere")
            await call.sink.send_event(self._resume_event(web_protocol.RESUMED_EVENT, call))
            await self._serve(ws, call)

    async def _serve(self, ws: WebSocket, call: WebCall) -> None:
        """Run one socket of a call; a dropped socket leaves the call alive for the grace period."""
        heartbeat = asyncio.create_task(self._heartbeat(call.sink))
        try:
            dropped = await self._receive_loop(ws, call)
        except Exception:  # a bug here must not leave the call open: it ends, with its record
            log.exception("call.socket_error", call_id=call.call_id)
            dropped, call.session.end_reason = False, call.session.end_reason or "gateway_error"
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        session = call.session
        if session.ended or call.sink.ws is not ws:
            return  # ended meanwhile, or this socket was replaced by a resume
        if dropped and self.settings.reconnect_grace_s > 0:
            call.sink.detach(ws)
            log.info("call.socket_lost", call_id=call.call_id, grace_s=self.settings.reconnect_grace_s)
            call.lost(self.settings.reconnect_grace_s)
            return
        await session.end(session.end_reason or "caller_hangup")

    async def _reap(self, call: WebCall) -> None:
        """When the call ends (from anywhere): free its slot, remember why, stop its timers."""
        await call.session.closed.wait()
        self.sessions.pop(call.call_id, None)
        self.calls.pop(call.call_id, None)
        self.admission.release(call.robot)
        self.ended.add(call.call_id, call.session.end_reason)
        await call.stop_tasks()
        if call.rate.dropped_bytes:
            log.warning(
                "call.audio_dropped", call_id=call.call_id, seconds=call.rate.dropped_bytes / call.rate.rate
            )

    async def _receive_loop(self, ws: WebSocket, call: WebCall) -> bool:
        """Feed the call from this socket until it ends; True when the socket dropped (no hangup)."""
        session = call.session
        while not session.ended:
            try:
                message = await ws.receive()
            except WebSocketDisconnect as exc:
                return exc.code not in HANGUP_CLOSE_CODES
            except RuntimeError:
                return True
            if message.get("type") == "websocket.disconnect":
                return int(message.get("code") or 1006) not in HANGUP_CLOSE_CODES
            if call.sink.ws is not ws:
                return False  # replaced by a resumed socket
            data = message.get("bytes")
            if data is not None:
                if len(data) > self.settings.max_message_bytes:
                    BAD_CLIENT_INPUT.labels("too_large").inc()
                    limit = self.settings.max_message_bytes
                    await call.sink.send_event(
                        {"type": "error", "message": f"binary frames are limited to {limit} bytes"}
                    )
                    continue
                await self._audio(call, data)
                continue
            try:
                event = parse_event(
                    message.get("text") or "", self.settings.max_text_bytes, self.settings.max_json_depth
                )
            except BadMessage as exc:
                BAD_CLIENT_INPUT.labels(exc.reason).inc()
                await call.sink.send_event({"type": "error", "message": str(exc)})
                continue
            kind = event.get("type")
            if kind == "heartbeat":
                await call.sink.send_event({"type": "heartbeat_ack", "ts_ms": now_ms()})
            elif kind == "hangup":
                session.end_reason = "caller_hangup"
                return False
            elif kind == "playback":
                if not call.sink.playback_report(event.get("done"), event.get("speaking")):
                    BAD_CLIENT_INPUT.labels("bad_playback").inc()
            elif kind == "dtmf" and isinstance(event.get("digits"), str):
                for key in event["digits"][:MAX_KEYS_PER_EVENT]:  # keypad keys, as on a phone
                    await session.press_key(key)
            elif kind not in ("start", "resume"):
                BAD_CLIENT_INPUT.labels("unknown_event").inc()
        return False

    async def _audio(self, call: WebCall, data: bytes) -> None:
        if not call.rate.take(len(data)):
            BAD_CLIENT_INPUT.labels("audio_too_fast").inc()
            AUDIO_DROPPED.inc(len(data) / call.rate.rate)
            if not call.warned_fast_audio:
                call.warned_fast_audio = True
                await call.sink.send_event(
                    {
                        "type": "error",
                        "message": "caller audio arrives faster than real time: the excess is dropped",
                    }
                )
            return
        call.last_audio = time.monotonic()
        metrics.FRAMES_IN.labels(SERVICE).inc()
        for frame in call.assembler.push(data):
            await call.session.push_audio(frame)

    async def _heartbeat(self, sink: WebSocketSink) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await sink.send_event({"type": "heartbeat", "ts_ms": now_ms()})


def build() -> tuple[GatewayWeb, GatewayWebSettings]:
    settings = GatewayWebSettings()
    return GatewayWeb(settings), settings
