"""A real HTTP + WebSocket server speaking ElevenLabs TTS (docs/protocols/elevenlabs.md), with knobs.

- ``POST /v1/text-to-speech/{voice_id}/stream?output_format=…``: ``xi-api-key`` check, JSON body,
  a chunked raw audio body (PCM S16LE or G.711), errors as ``{"detail": {"status", "message"}}``.
- ``/v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=…`` (WebSocket): key in the
  handshake header or in the first message (``xi_api_key`` or ``xi-api-key``, both spellings exist);
  the open message ``{"text": " "}``; text buffered until ``flush`` or the end ``{"text": ""}``; audio
  as ``{"audio": <base64>, "isFinal": null, "alignment": …}`` and ``{"isFinal": true}`` last. The
  error frame and close codes are [U] in docs/protocols/elevenlabs.md: this stand-in sends
  ``{"message", "error", "code"}`` and closes with 1008 (``ws_error_mode="frame"``), or refuses the
  handshake with an HTTP status (``"handshake"``).

Audio is a 440 Hz tone, ``ms_per_char`` per character of text, unless ``behavior.audio`` gives the
exact bytes. Records every request / socket, its messages, the peer address and whether the client
went away before the stream ended.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.stand_ins.uvicorn_app import UvicornStandIn

VALID_KEY = "xi-test-secret-7a7a7a"


def tone_pcm16(rate: int, seconds: float, freq: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 μ-law compression (the classic bias-and-segment algorithm), written apart from the client."""
    s = samples.astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(mag >> 7)).astype(np.int32), 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    encoded: bytes = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()
    return encoded


def audio_for(text: str, output_format: str, ms_per_char: float) -> bytes:
    seconds = max(0.1, len(text) * ms_per_char / 1000)
    if output_format.startswith("pcm_"):
        return tone_pcm16(int(output_format[4:]), seconds).astype("<i2").tobytes()
    if output_format == "ulaw_8000":
        return ulaw_encode(tone_pcm16(8000, seconds))
    if output_format == "alaw_8000":
        return b"\xd5" * int(8000 * seconds)  # A-law "+8", near silence
    raise ValueError(f"stand-in has no {output_format}")


@dataclass
class Behavior:
    api_key: str = VALID_KEY
    audio: bytes | None = None  # exact payload instead of the tone
    ms_per_char: float = 20.0
    chunk_bytes: int = 641  # odd on purpose: PCM samples split across chunks
    chunk_delay_s: float = 0.0
    content_type: str = "audio/mpeg"  # the spec's type; for PCM the real one is [U]
    character_cost: int | None = None  # ``character-cost`` response header
    # failure before any audio: HTTP status + vendor code (WS: see ws_error_mode)
    fail_status: int | None = None
    fail_code: str = "system_busy"
    fail_message: str = "The system is busy"
    ws_error_mode: Literal["frame", "handshake"] = "frame"
    # failures mid-stream, after this many audio chunks
    stall_after: int | None = None  # stop sending, keep the connection open
    truncate_after: int | None = None  # HTTP: drop the connection; WS: close 1011 without isFinal
    malformed_after: int | None = None  # WS: a frame that is not JSON
    bad_base64_after: int | None = None  # WS: "audio" that is not base64
    close_normally_after: int | None = None  # WS: close 1000 without isFinal
    error_frame_after: int | None = None  # WS: the error frame after some audio


@dataclass
class StreamRecord:
    transport: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    peer: tuple[str, int]
    body: dict[str, Any] = field(default_factory=dict)  # HTTP JSON body
    messages: list[dict[str, Any]] = field(default_factory=list)  # WS client messages
    chunks_sent: int = 0
    finished: bool = False
    client_closed_early: bool = False
    closed_at: float = 0.0


@dataclass
class Recorded:
    streams: list[StreamRecord] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"detail": {"status": code, "message": message}}


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class _HttpStream:
    def __init__(self, server: ElevenLabsStandIn) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        rec = self.server.record(scope, "http")
        rec.body = json.loads(raw or b"{}")
        b = self.server.behavior
        status, code, text = self.server.check(rec.headers.get("xi-api-key"), rec.query, rec.body.get("text"))
        if status is not None:
            await JSONResponse(_error_body(code, text), status_code=status)(scope, receive, send)
            return
        audio = (
            b.audio
            if b.audio is not None
            else audio_for(rec.body["text"], rec.query["output_format"], b.ms_per_char)
        )
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch_disconnect())
        headers = [(b"content-type", b.content_type.encode())]
        if b.character_cost is not None:
            headers.append((b"character-cost", str(b.character_cost).encode()))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i, chunk in enumerate(_chunks(audio, b.chunk_bytes)):
                if b.truncate_after is not None and i >= b.truncate_after:
                    return  # an unfinished response: uvicorn drops the connection
                if b.stall_after is not None and i >= b.stall_after:
                    await disconnected.wait()
                if b.chunk_delay_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), b.chunk_delay_s)
                if disconnected.is_set():
                    self.server.closed_early(rec)
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                rec.chunks_sent += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            rec.finished = True
        except OSError:
            self.server.closed_early(rec)
        finally:
            watcher.cancel()


class _WsStreamInput:
    def __init__(self, server: ElevenLabsStandIn) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        rec = self.server.record(scope, "ws")
        b = self.server.behavior
        if b.fail_status is not None and b.ws_error_mode == "handshake":
            denial = JSONResponse(_error_body(b.fail_code, b.fail_message), b.fail_status)
            await ws.send_denial_response(denial)
            return
        await ws.accept()
        session = _WsSession(self.server, ws, rec)
        reader = asyncio.create_task(session.read_client())
        try:
            await session.run()
        except (WebSocketDisconnect, OSError):
            self.server.closed_early(rec)
        finally:
            reader.cancel()


class _WsSession:
    """One stream-input socket: a reader task queues client messages and notices the client leaving."""

    def __init__(self, server: ElevenLabsStandIn, ws: WebSocket, rec: StreamRecord) -> None:
        self.server, self.ws, self.rec = server, ws, rec
        self.b = server.behavior
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.sent = 0

    async def read_client(self) -> None:
        try:
            while True:
                message = json.loads(await self.ws.receive_text())
                self.rec.messages.append(message)
                await self.inbox.put(message)
        except (WebSocketDisconnect, OSError, RuntimeError):
            self.gone.set()

    async def next_message(self) -> dict[str, Any]:
        getter = asyncio.ensure_future(self.inbox.get())
        gone = asyncio.ensure_future(self.gone.wait())
        await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if getter.done():
            return getter.result()
        getter.cancel()
        raise WebSocketDisconnect(1000)

    async def run(self) -> None:
        first = await self.next_message()
        key = self.rec.headers.get("xi-api-key") or first.get("xi_api_key") or first.get("xi-api-key")
        status, code, text = self.server.check(key, self.rec.query, first.get("text"))
        if status is None and first.get("text") != " ":
            status, code, text = 400, "invalid_request", "the first message must have text ' '"
        if status is not None:
            await self.error_frame(code, text, status)
            return
        buffered = ""
        while True:
            message = await self.next_message()
            end = message.get("text") == ""
            buffered += message.get("text", "")
            if not (end or message.get("flush")):
                continue
            if buffered.strip():
                fmt = self.rec.query["output_format"]
                audio = (
                    self.b.audio
                    if self.b.audio is not None
                    else audio_for(buffered.strip(), fmt, self.b.ms_per_char)
                )
                buffered = ""
                for chunk in _chunks(audio, self.b.chunk_bytes):
                    if not await self.send_audio(chunk):
                        return
            if end:
                break
        await self.ws.send_json({"audio": None, "isFinal": True})
        self.rec.finished = True
        await self.ws.close(1000)

    async def send_audio(self, chunk: bytes) -> bool:
        """Send one audio message; False when a scripted failure ended the session."""
        b, i = self.b, self.sent
        if b.stall_after is not None and i >= b.stall_after:
            await self.gone.wait()
            raise WebSocketDisconnect(1000)
        if b.truncate_after is not None and i >= b.truncate_after:
            await self.ws.close(1011)
            return False
        if b.close_normally_after is not None and i >= b.close_normally_after:
            await self.ws.close(1000)
            return False
        if b.error_frame_after is not None and i >= b.error_frame_after:
            await self.error_frame(b.fail_code, b.fail_message, b.fail_status or 429)
            return False
        if b.chunk_delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), b.chunk_delay_s)
        if self.gone.is_set():
            raise WebSocketDisconnect(1000)
        if b.malformed_after is not None and i >= b.malformed_after:
            await self.ws.send_text('{"audio": "AAAA", "isFinal": ')
            return False
        bad = b.bad_base64_after is not None and i >= b.bad_base64_after
        n = len(chunk)
        await self.ws.send_json(
            {
                "audio": "%%%not-base64%%%" if bad else base64.b64encode(chunk).decode(),
                "isFinal": None,
                "normalizedAlignment": {"charStartTimesMs": [0], "charsDurationsMs": [n], "chars": ["a"]},
                "alignment": {"charStartTimesMs": [0], "charsDurationsMs": [n], "chars": ["a"]},
            }
        )
        self.sent += 1
        self.rec.chunks_sent += 1
        return True

    async def error_frame(self, code: str, text: str, status: int) -> None:
        await self.ws.send_json({"message": text, "error": code, "code": status})
        await self.ws.close(1008, reason=code)


class ElevenLabsStandIn(UvicornStandIn):
    """``async with ElevenLabsStandIn() as server:`` → ``server.base_url`` / ``server.ws_url``."""

    def __init__(self) -> None:
        self.behavior = Behavior()
        self.recorded = Recorded()
        base = "/v1/text-to-speech/{voice_id}"
        app = Starlette(
            routes=[
                Route(base + "/stream", _HttpStream(self), methods=["POST"]),
                WebSocketRoute(base + "/stream-input", _WsStreamInput(self)),
            ]
        )
        super().__init__(app, ws="websockets-sansio")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def record(self, scope: Scope, transport: str) -> StreamRecord:
        client = scope.get("client") or ("", 0)
        rec = StreamRecord(
            transport=transport,
            path=scope["path"],
            query=dict(parse_qsl(scope.get("query_string", b"").decode())),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
            peer=(client[0], client[1]),
        )
        self.recorded.streams.append(rec)
        return rec

    def check(self, key: str | None, query: dict[str, str], text: Any) -> tuple[int | None, str, str]:
        """(status, vendor code, message) of the scripted or real failure; status None when fine."""
        b = self.behavior
        if key != b.api_key:
            return 401, "invalid_api_key", f"Invalid API key: {key}"  # echoes it: clients must mask
        if b.fail_status is not None:
            return b.fail_status, b.fail_code, b.fail_message
        fmt = query.get("output_format", "mp3_44100_128")
        if not (fmt.startswith("pcm_") or fmt in ("ulaw_8000", "alaw_8000")):
            return 422, "invalid_output_format", "output_format not served by the stand-in"
        if not isinstance(text, str):
            return 400, "invalid_request", "text is required"
        return None, "", ""

    def closed_early(self, rec: StreamRecord) -> None:
        rec.client_closed_early = True
        rec.closed_at = time.monotonic()
        self.recorded.client_closed.set()
