"""A real HTTP server speaking Yandex SpeechKit TTS REST (docs/protocols/yandex-speechkit.md), with knobs.

- ``POST /tts/v3/utteranceSynthesis``: JSON body; answers newline-delimited JSON, one
  ``{"result": {"audioChunk": {"data": "<base64>"}, ...}}`` per ``chunk_ms`` of audio. Without
  ``outputAudioSpec`` the audio is WAV at 22050 Hz (the real default), header in the first chunk.
- ``POST /speech/v1/tts:synthesize``: form body; ``format=lpcm`` answers raw PCM, chunked.

Auth is ``Authorization: Api-Key <api_key>`` or ``Bearer <iam_token>``; a Bearer caller must name a
folder (``x-folder-id`` for v3, ``folderId`` for v1). Errors use the v3 REST body
``{"error": {"grpcCode", "httpCode", "message", "httpStatus", "details"}}`` and the v1 body
``{"error_code", "error_message"}``. Audio is a 440 Hz tone, ``MS_PER_CHAR`` ms per character of
text, so tests know its exact length. Every request and every stream (and whether the client closed
it early) is recorded.

    async with YandexTtsStandIn() as server:
        server.behavior.fail_status = 429
        ...  # tts.providers.yandex.base_url = server.base_url
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.stand_ins.uvicorn_app import UvicornStandIn

MS_PER_CHAR = 50
API_KEY = "AQVN-yandex-test-key-1234"
IAM_TOKEN = "t1.iam-test-token-5678"
V1_VOICES = {"alena", "filipp", "jane", "ermil", "omazh", "zahar", "madi_ru", "john"}
V3_VOICES = V1_VOICES | {"marina", "dasha", "julia", "lera", "masha", "alexander", "kirill", "anton"}
V1_RATES = {8000, 16000, 48000}
_GRPC = {400: 3, 401: 16, 403: 7, 429: 8, 500: 13, 503: 14, 504: 4}
_PHRASE = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Behavior:
    api_key: str = API_KEY
    iam_token: str = IAM_TOKEN
    chunk_ms: int = 100
    chunk_delay_s: float = 0.0
    fail_status: int | None = None  # answer this status with the API's error body, no audio
    fail_message: str = "scripted failure"
    retry_after: str = ""  # Retry-After header on a scripted failure
    error_in_stream_after: int | None = None  # v3: an {"error": ...} line after N chunks
    malformed_after: int | None = None  # v3: a broken JSON line after N chunks, then end
    bad_base64_after: int | None = None  # v3: a chunk whose data is not base64, after N chunks
    odd_byte: bool = False  # one stray byte after the audio
    truncate_after: int | None = None  # drop the connection mid-body after N chunks
    stall_after: int | None = None  # stop sending after N chunks and wait for the client to leave
    wav_container: bool = False  # v3: wrap the raw audio in a WAV header anyway


@dataclass
class StreamRecord:
    api: str
    chunks_total: int = 0
    chunks_sent: int = 0
    finished: bool = False
    client_closed_early: bool = False
    closed_at: float = 0.0


@dataclass
class RequestRecord:
    api: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int = 200


@dataclass
class Recorded:
    requests: list[RequestRecord] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


class RequestRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def expected_samples(text: str, rate: int) -> int:
    """Samples the stand-in synthesizes for ``text`` (after the client collapses whitespace)."""
    return len(" ".join(text.split())) * MS_PER_CHAR * rate // 1000


def tone(samples: int, rate: int) -> bytes:
    t = np.arange(samples, dtype=np.float64) / rate
    return np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


class _Synthesis:
    """One of the two endpoints; ``api`` is "v3" or "v1"."""

    def __init__(self, server: YandexTtsStandIn, api: str) -> None:
        self.server = server
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        record = RequestRecord(self.api, headers, {})
        self.server.recorded.requests.append(record)
        b = self.server.behavior
        try:
            record.body = self._parse(raw, headers)
            self._check_auth(headers, record.body)
            if b.fail_status is not None:
                raise RequestRejected(b.fail_status, b.fail_message)
            try:
                audio, rate = self._audio(record.body)
            except ValueError:
                raise RequestRejected(400, "malformed field value") from None
        except RequestRejected as rejected:
            record.status = rejected.status
            await self._error(send, rejected.status, rejected.message)
            return
        step = max(2, rate * b.chunk_ms // 1000 * 2)
        pieces = [audio[i : i + step] for i in range(0, len(audio), step)]
        if b.odd_byte:
            pieces.append(b"\x00")
        await self._stream(receive, send, pieces, rate)

    # ---- request checks -----------------------------------------------------------------------
    def _parse(self, raw: bytes, headers: dict[str, str]) -> dict[str, Any]:
        try:
            if self.api == "v3":
                if not headers.get("content-type", "").startswith("application/json"):
                    raise RequestRejected(400, "expected a JSON body")
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise RequestRejected(400, "body must be an object")
                return body
            if headers.get("content-type", "") != "application/x-www-form-urlencoded":
                raise RequestRejected(400, "expected an x-www-form-urlencoded body")
            return dict(parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=True))
        except (ValueError, UnicodeDecodeError):
            raise RequestRejected(400, "cannot parse the body") from None

    def _check_auth(self, headers: dict[str, str], body: dict[str, Any]) -> None:
        b = self.server.behavior
        auth = headers.get("authorization", "")
        if auth == f"Bearer {b.iam_token}":
            folder = headers.get("x-folder-id") if self.api == "v3" else body.get("folderId")
            if not folder:
                raise RequestRejected(400, "folder id is required for a user account")
        elif auth != f"Api-Key {b.api_key}":
            raise RequestRejected(401, f"The token is invalid: {auth[-40:]}")

    def _audio(self, body: dict[str, Any]) -> tuple[bytes, int]:
        return self._v3_audio(body) if self.api == "v3" else self._v1_audio(body)

    def _v3_audio(self, body: dict[str, Any]) -> tuple[bytes, int]:
        text = body.get("text")
        if not isinstance(text, str) or not text or len(text) > 5000:
            raise RequestRejected(400, "text must hold 1..5000 characters")
        voice = "marina"
        for hint in body.get("hints", []):
            if not isinstance(hint, dict) or len(hint) != 1:
                raise RequestRejected(400, "each hint sets exactly one field")
            [(key, value)] = hint.items()
            if key not in {"voice", "speed", "volume", "role", "pitchShift", "audioTemplate", "duration"}:
                raise RequestRejected(400, f"unknown hint {key}")
            if key == "voice":
                voice = value
        if voice not in V3_VOICES:
            raise RequestRejected(400, f"unknown voice {voice}")
        spec = body.get("outputAudioSpec")
        if spec is None:  # the API's default: LPCM at 22050 Hz in a WAV container
            pcm = tone(expected_samples(text, 22050), 22050)
            return wav_header(22050, len(pcm)) + pcm, 22050
        raw_audio = spec.get("rawAudio") if isinstance(spec, dict) else None
        if not isinstance(raw_audio, dict) or raw_audio.get("audioEncoding") != "LINEAR16_PCM":
            raise RequestRejected(400, "stand-in supports rawAudio LINEAR16_PCM only")
        rate_field = str(raw_audio.get("sampleRateHertz"))  # int64: a string in proto-JSON, or a number
        rate = int(rate_field) if rate_field.isdigit() else 0
        if not 8000 <= rate <= 48000:
            raise RequestRejected(400, "sampleRateHertz must be 8000..48000")
        pcm = tone(expected_samples(text, rate), rate)
        if self.server.behavior.wav_container:
            return wav_header(rate, len(pcm)) + pcm, rate
        return pcm, rate

    def _v1_audio(self, form: dict[str, Any]) -> tuple[bytes, int]:
        text = form.get("text", "")
        if not text or len(text) > 5000:
            raise RequestRejected(400, "text must hold 1..5000 characters")
        if form.get("voice", "alena") not in V1_VOICES:
            raise RequestRejected(400, "unknown voice")
        if form.get("format") != "lpcm":
            raise RequestRejected(400, "stand-in supports format=lpcm only")
        rate = int(form.get("sampleRateHertz", "48000"))
        if rate not in V1_RATES:
            raise RequestRejected(400, "sampleRateHertz must be 8000, 16000 or 48000")
        speed = float(form.get("speed", "1.0"))
        if not 0.1 <= speed <= 3.0:
            raise RequestRejected(400, "speed must be 0.1..3.0")
        return tone(expected_samples(text, rate), rate), rate

    # ---- answers ------------------------------------------------------------------------------
    async def _error(self, send: Send, status: int, message: str) -> None:
        if self.api == "v3":
            body: dict[str, Any] = {
                "error": {
                    "grpcCode": _GRPC.get(status, 2),
                    "httpCode": status,
                    "message": message,
                    "httpStatus": _PHRASE.get(status, "Error"),
                    "details": [],
                }
            }
        else:
            code = _PHRASE.get(status, "ERROR").upper().replace(" ", "_")
            body = {"error_code": code, "error_message": message}
        headers = [(b"content-type", b"application/json"), (b"x-request-id", b"standin-req-1")]
        if status == 429 and self.server.behavior.retry_after:
            headers.append((b"retry-after", self.server.behavior.retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    def _line(self, index: int, piece: bytes, start_ms: int, length_ms: int) -> bytes:
        b = self.server.behavior
        data = "!!not-base64!!" if index == b.bad_base64_after else base64.b64encode(piece).decode()
        result: dict[str, Any] = {
            "audioChunk": {"data": data},
            "startMs": str(start_ms),
            "lengthMs": str(length_ms),
        }
        if index == 0:
            result["textChunk"] = {"text": ""}
        return json.dumps({"result": result}).encode() + b"\n"

    async def _stream(self, receive: Receive, send: Send, pieces: list[bytes], rate: int) -> None:
        b = self.server.behavior
        stream = StreamRecord(self.api, chunks_total=len(pieces))
        self.server.recorded.streams.append(stream)
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch_disconnect())
        content_type = b"application/json" if self.api == "v3" else b"audio/x-pcm"
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", content_type), (b"x-request-id", b"standin-req-1")],
                }
            )
            start_ms = 0
            for i, piece in enumerate(pieces):
                if i == b.truncate_after:
                    return  # the app returns mid-body: uvicorn drops the connection
                if i == b.stall_after:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), 30.0)
                if b.chunk_delay_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), b.chunk_delay_s)
                if disconnected.is_set():
                    self._closed_early(stream)
                    return
                if self.api == "v3" and i == b.malformed_after:
                    await send({"type": "http.response.body", "body": b'{"result": {"audioCh\n'})
                    return
                if self.api == "v3" and i == b.error_in_stream_after:
                    error = {"error": {"grpcCode": 13, "httpCode": 500, "message": b.fail_message}}
                    await send({"type": "http.response.body", "body": json.dumps(error).encode() + b"\n"})
                    return
                length_ms = len(piece) * 1000 // 2 // rate
                body = self._line(i, piece, start_ms, length_ms) if self.api == "v3" else piece
                start_ms += length_ms
                await send({"type": "http.response.body", "body": body, "more_body": True})
                stream.chunks_sent += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            stream.finished = True
        except OSError:  # the client went away while we were writing
            self._closed_early(stream)
        finally:
            watcher.cancel()

    def _closed_early(self, stream: StreamRecord) -> None:
        stream.client_closed_early = True
        stream.closed_at = time.monotonic()
        self.server.recorded.client_closed.set()


class YandexTtsStandIn(UvicornStandIn):
    def __init__(self) -> None:
        self.behavior = Behavior()
        self.recorded = Recorded()
        app = Starlette(
            routes=[
                Route("/tts/v3/utteranceSynthesis", _Synthesis(self, "v3"), methods=["POST"]),
                Route("/speech/v1/tts:synthesize", _Synthesis(self, "v1"), methods=["POST"]),
            ]
        )
        super().__init__(app, log_level="critical")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
