"""A real HTTP server speaking the Zvukogram TTS API (docs/protocols/zvukogram.md), with knobs.

- ``POST /index.php?r=api/text``: synchronous; text over ``short_limit`` characters is refused.
- ``POST /index.php?r=api/longtext``: a job, ``{"id", "status": 0}``; ``api/result`` (``id``) says
  ``status`` 0 until it has been polled ``polls_until_ready`` times, then 1 with ``file``.
- ``GET /texttomp3/<name>``: the audio file (WAV by default; MP3 when ``format=mp3`` is asked or
  ``file_format`` forces it), sent chunked so slow or cut downloads can be scripted.

``token`` and ``email`` are form fields of every API call; a wrong pair is answered like the API
answers its own errors: HTTP 200, ``status`` -1 and an ``error`` text. ``fail_status`` scripts an
HTTP-level failure instead. Audio is a 440 Hz tone, ``MS_PER_CHAR`` ms per character, at the asked
``sample_rate`` (22050 if none; ``file_rate`` overrides it, as a server ignoring the field would).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import time
import wave
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import av
import numpy as np
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.stand_ins.uvicorn_app import UvicornStandIn

TOKEN = "zvk-test-token-9876abcd"
EMAIL = "robot-owner@example.com"
MS_PER_CHAR = 50
DEFAULT_RATE = 22050


@dataclass
class Behavior:
    token: str = TOKEN
    email: str = EMAIL
    short_limit: int = 300
    polls_until_ready: int = 2
    job_fails: bool = False  # api/result reports status -1 once the job "finishes"
    api_error: str | None = None  # api/text and api/longtext refuse with this error text
    status_as_string: bool = False  # "status": "1" instead of 1
    fail_status: int | None = None  # HTTP-level failure of API calls
    fail_message: str = "scripted failure"
    retry_after: str = ""
    malformed_json: bool = False
    stall_api: bool = False  # API calls never answer (until the client leaves)
    file_rate: int | None = None
    file_channels: int = 1
    file_format: str | None = None  # "wav", "mp3", "html" or "badmp3", whatever was asked
    file_status: int = 200
    file_truncated: bool = False  # the WAV header promises more audio than is sent
    file_cut_after: int | None = None  # drop the connection after N chunks of the file
    file_chunk_bytes: int = 4096
    file_chunk_delay_s: float = 0.0


@dataclass
class ApiCall:
    method: str
    query: str
    content_type: str
    fields: dict[str, str]
    answer: dict[str, Any] | None = None


@dataclass
class Download:
    path: str
    chunks_total: int = 0
    chunks_sent: int = 0
    finished: bool = False
    client_closed_early: bool = False
    closed_at: float = 0.0


@dataclass
class Job:
    id: str
    fields: dict[str, str]
    polls: int = 0


@dataclass
class Recorded:
    calls: list[ApiCall] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]


def expected_samples(text: str, rate: int) -> int:
    return len(" ".join(text.split())) * MS_PER_CHAR * rate // 1000


def tone(samples: int, rate: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    t = np.arange(samples, dtype=np.float64) / rate
    return np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def wav_file(samples: np.ndarray[Any, np.dtype[np.int16]], rate: int, channels: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.repeat(samples, channels).astype("<i2").tobytes())
    return buf.getvalue()


def mp3_file(samples: np.ndarray[Any, np.dtype[np.int16]], rate: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        piece: bytes = message.get("body", b"")
        body += piece
        if not message.get("more_body"):
            return body


async def _wait_disconnect(receive: Receive, event: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    event.set()


class _Api:
    def __init__(self, server: ZvukogramStandIn) -> None:
        self.server = server
        self._ids = itertools.count(2870459)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = scope["query_string"].decode()
        method = dict(parse_qsl(query)).get("r", "")
        fields = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        call = ApiCall(method, query, headers.get("content-type", ""), fields)
        self.server.recorded.calls.append(call)
        b = self.server.behavior
        if b.stall_api:
            left = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_wait_disconnect(receive, left), 30.0)
            if left.is_set():
                self.server.recorded.client_closed.set()
            return
        if b.fail_status is not None:
            extra = [(b"retry-after", b.retry_after.encode())] if b.retry_after else []
            body = json.dumps({"status": -1, "error": b.fail_message}, ensure_ascii=False).encode()
            await self._send(send, b.fail_status, body, extra)
            return
        call.answer = self._answer(method, fields)
        if b.malformed_json:
            await self._send(send, 200, b'{"id": "1", "status": 1, "file": ')
            return
        answer = dict(call.answer)
        if b.status_as_string:
            answer["status"] = str(answer["status"])
        await self._send(send, 200, json.dumps(answer, ensure_ascii=False).encode())

    def _answer(self, method: str, fields: dict[str, str]) -> dict[str, Any]:
        b = self.server.behavior
        if fields.get("token") != b.token or fields.get("email") != b.email:
            return {"status": -1, "error": "Неверный токен или email"}
        jobs = self.server.recorded.jobs
        if method == "api/result":
            job = jobs.get(fields.get("id", ""))
            if job is None:
                return {"status": -1, "error": "Задание не найдено"}
            job.polls += 1
            if job.polls < b.polls_until_ready:
                return {"id": job.id, "status": 0, "error": ""}
            if b.job_fails:
                return {"id": job.id, "status": -1, "error": "Ошибка синтеза"}
            return self._ready(job.id, job.fields)
        if method not in ("api/text", "api/longtext"):
            return {"status": -1, "error": "Неизвестный метод"}
        if b.api_error is not None:
            return {"status": -1, "error": b.api_error}
        text = fields.get("text", "")
        if not text or not fields.get("voice"):
            return {"status": -1, "error": "Не указан текст или голос"}
        if method == "api/text" and len(text) > b.short_limit:
            return {"status": -1, "error": f"Текст длиннее {b.short_limit} символов, используйте longtext"}
        job_id = str(next(self._ids))
        if method == "api/longtext":
            jobs[job_id] = Job(job_id, fields)
            return {"id": job_id, "status": 0, "error": ""}
        return self._ready(job_id, fields)

    def _ready(self, job_id: str, fields: dict[str, str]) -> dict[str, Any]:
        b = self.server.behavior
        fmt = b.file_format or fields.get("format", "mp3")
        rate = b.file_rate or int(fields.get("sample_rate") or DEFAULT_RATE)
        samples = tone(expected_samples(fields["text"], rate), rate)
        if fmt == "mp3":
            audio = mp3_file(samples, rate)
        elif fmt == "html":
            audio = b"<html><body>Not found</body></html>"
        elif fmt == "badmp3":
            audio = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + bytes(range(256)) * 4
        else:
            audio = wav_file(samples, rate, b.file_channels)
            if b.file_truncated:
                audio = audio[: len(audio) // 2]
        name = f"p_{job_id}_342.{fmt}"
        self.server.files[name] = audio
        return {
            "id": job_id,
            "status": 1,
            "file": f"{self.server.origin}/texttomp3/{name}",
            "file_cors": f"{self.server.origin}/index.php?r=site/download&prj={job_id}&cors=abc",
            "parts": "1",
            "parts_done": "1",
            "duration": round(len(samples) / rate, 3),
            "format": fmt,
            "error": "",
            "balans": "11563.364",
            "cost": 0.042,
        }

    @staticmethod
    async def _send(
        send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [(b"content-type", b"application/json; charset=utf-8"), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Files:
    def __init__(self, server: ZvukogramStandIn) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _read_body(receive)
        b = self.server.behavior
        name = scope["path"].rsplit("/", 1)[-1]
        record = Download(scope["path"])
        self.server.recorded.downloads.append(record)
        audio = self.server.files.get(name)
        if audio is None or b.file_status != 200:
            status = 404 if audio is None else b.file_status
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        pieces = [audio[i : i + b.file_chunk_bytes] for i in range(0, len(audio), b.file_chunk_bytes)]
        record.chunks_total = len(pieces)
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_wait_disconnect(receive, disconnected))
        content_type = b"audio/mpeg" if "mp3" in name else b"audio/wav"
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
            )
            for i, piece in enumerate(pieces):
                if i == b.file_cut_after:
                    return  # returning mid-body makes uvicorn drop the connection
                if b.file_chunk_delay_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), b.file_chunk_delay_s)
                if disconnected.is_set():
                    self._closed_early(record)
                    return
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                record.chunks_sent += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record.finished = True
        except OSError:
            self._closed_early(record)
        finally:
            watcher.cancel()

    def _closed_early(self, record: Download) -> None:
        record.client_closed_early = True
        record.closed_at = time.monotonic()
        self.server.recorded.client_closed.set()


class ZvukogramStandIn(UvicornStandIn):
    def __init__(self) -> None:
        self.behavior = Behavior()
        self.recorded = Recorded()
        self.files: dict[str, bytes] = {}
        app = Starlette(
            routes=[
                Route("/index.php", _Api(self), methods=["POST", "GET"]),
                Route("/texttomp3/{name}", _Files(self), methods=["GET"]),
            ]
        )
        super().__init__(app, log_level="critical")

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/index.php"
