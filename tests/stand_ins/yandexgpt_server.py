"""A real HTTP server speaking YandexGPT's native REST ``completion`` streaming, with knobs.

Wire format (docs/protocols/yandexgpt.md): ``POST /foundationModels/v1/completion``; auth ``Api-Key <key>`` or
``Bearer <IAM token>``; the answer is newline-delimited JSON, one ``{"result": {...}}`` per line, each
carrying the WHOLE text so far (status ``ALTERNATIVE_STATUS_PARTIAL``), the last one with a final
status and usage (int64 as strings); then the connection closes. Errors are
``{"error": {"grpcCode", "httpCode", "message", "httpStatus", "details"}}``.

Started on 127.0.0.1 at a random port inside the test's event loop::

    async with YandexGptStandIn(api_key="...", folder_id="b1g...") as server:
        server.behavior.reply = "Привет. Как дела?"
        ...  # llm.providers.yandex.base_url = server.base_url

Knobs (``server.behavior``): the reply (one cumulative line per word) or an explicit script of
(text, status) lines, a delay per line, a status to fail with before the stream, an error line,
a malformed line, truncation, a stall (no bytes), a slow trickle (one byte at a time), the final
status (content filter). Records every request and observes the client closing a stream early.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.stand_ins.uvicorn_app import UvicornStandIn

PARTIAL = "ALTERNATIVE_STATUS_PARTIAL"
FINAL = "ALTERNATIVE_STATUS_FINAL"
CONTENT_FILTER = "ALTERNATIVE_STATUS_CONTENT_FILTER"
# HTTP status → (gRPC code, reason phrase), from Yandex's gRPC↔HTTP table (docs/protocols/yandex-speechkit.md)
GRPC_OF_HTTP = {
    400: (3, "Bad Request"),
    401: (16, "Unauthorized"),
    403: (7, "Forbidden"),
    429: (8, "Too Many Requests"),
    500: (13, "Internal Server Error"),
    503: (14, "Service Unavailable"),
    504: (4, "Gateway Timeout"),
}


@dataclass
class Behavior:
    reply: str = "Здравствуйте. Чем могу помочь?"
    # explicit (cumulative text, status) lines instead of ``reply`` split by words
    script: list[tuple[str, str]] | None = None
    final_status: str = FINAL
    line_delay_s: float = 0.0
    fail_status: int | None = None
    fail_message: str = "upstream failed"
    error_after: int | None = None  # an {"error": ...} line (with fail_status or 500) after N lines
    malformed_after: int | None = None  # a broken JSON line after N lines, then close
    stop_after: int | None = None  # close cleanly after N lines, no final line
    stall_after: int | None = None  # after N lines send nothing more until the client goes away
    trickle_byte_delay_s: float | None = None  # send every line one byte at a time
    input_tokens: int = 28


@dataclass
class StreamRecord:
    lines_total: int = 0
    lines_sent: int = 0
    finished: bool = False  # the final line went out and the body was closed
    client_closed_early: bool = False
    closed_at: float = 0.0  # monotonic time the disconnect was seen


@dataclass
class Recorded:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


def cumulative_lines(text: str) -> list[str]:
    """The text so far after each word (with its trailing whitespace), like the real stream."""
    words = re.findall(r"\S+\s*", text)
    return ["".join(words[: i + 1]) for i in range(len(words))]


def error_body(status: int, message: str) -> bytes:
    grpc_code, phrase = GRPC_OF_HTTP.get(status, (2, "Error"))
    err = {"grpcCode": grpc_code, "httpCode": status, "message": message, "httpStatus": phrase, "details": []}
    return json.dumps({"error": err}, ensure_ascii=False).encode()


class _Completion:
    def __init__(self, server: YandexGptStandIn) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        rec = self.server.recorded
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        rec.headers.append(headers)
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            await self._fail(send, 400, "invalid JSON body")
            return
        rec.requests.append(body)
        problem = self._check(headers, body)
        if problem is not None:
            await self._fail(send, *problem)
            return
        b = self.server.behavior
        if b.fail_status is not None and b.error_after is None:
            await self._fail(send, b.fail_status, b.fail_message)
            return
        await self._stream(receive, send, b)

    def _check(self, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, str] | None:
        s = self.server
        auth = headers.get("authorization", "")
        accepted = {f"Api-Key {s.api_key}", f"Bearer {s.iam_token}"}
        if auth not in accepted:
            return 401, "The API key or IAM token is invalid"
        folder = headers.get("x-folder-id", s.folder_id)
        uri = str(body.get("modelUri", ""))
        if folder != s.folder_id or not uri.startswith(f"gpt://{s.folder_id}/"):
            return 403, f"Permission to [resource-manager.folder {folder}] denied"
        if not body.get("messages"):
            return 400, "messages: at least one message is required"
        return None

    async def _fail(self, send: Send, status: int, message: str) -> None:
        headers = [(b"content-type", b"application/json"), (b"x-request-id", b"standin-req")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": error_body(status, message)})

    def _lines(self, b: Behavior) -> list[bytes]:
        steps = b.script
        if steps is None:
            texts = cumulative_lines(b.reply) or [""]
            steps = [(t, PARTIAL) for t in texts[:-1]] + [(texts[-1], b.final_status)]
        out = []
        for i, (text, status) in enumerate(steps):
            result = {
                "alternatives": [{"message": {"role": "assistant", "text": text}, "status": status}],
                "usage": {
                    "inputTextTokens": str(b.input_tokens),
                    "completionTokens": str(i + 1),
                    "totalTokens": str(b.input_tokens + i + 1),
                },
                "modelVersion": "23.10.2024",
            }
            out.append(json.dumps({"result": result}, ensure_ascii=False).encode() + b"\n")
        return out

    async def _stream(self, receive: Receive, send: Send, b: Behavior) -> None:
        stream = StreamRecord()
        rec = self.server.recorded
        rec.streams.append(stream)
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not stream.finished:
                        stream.client_closed_early = True
                        stream.closed_at = time.monotonic()
                        rec.client_closed.set()
                    disconnected.set()
                    return

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        watcher = asyncio.create_task(watch_disconnect())
        try:
            headers = [(b"content-type", b"application/json"), (b"x-request-id", b"standin-req")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            lines = self._lines(b)
            stream.lines_total = len(lines)
            for i, line in enumerate(lines):
                if b.line_delay_s and i:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), b.line_delay_s)
                if disconnected.is_set():
                    return
                if b.stall_after is not None and i >= b.stall_after:
                    await disconnected.wait()
                    return
                if b.stop_after is not None and i >= b.stop_after:
                    await body(b"", more=False)
                    return
                if b.malformed_after is not None and i >= b.malformed_after:
                    await body(b'{"result": {"alternatives": [\n')
                    await body(b"", more=False)
                    return
                if b.error_after is not None and i >= b.error_after:
                    await body(error_body(b.fail_status or 500, b.fail_message) + b"\n")
                    await body(b"", more=False)
                    return
                if b.trickle_byte_delay_s is not None:
                    for byte in line:
                        await body(bytes([byte]))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(disconnected.wait(), b.trickle_byte_delay_s)
                        if disconnected.is_set():
                            return
                else:
                    await body(line)
                stream.lines_sent += 1
            stream.finished = True
            await body(b"", more=False)
        except OSError:  # the client went away while we were writing
            pass
        finally:
            watcher.cancel()


class YandexGptStandIn(UvicornStandIn):
    def __init__(self, api_key: str, folder_id: str, iam_token: str = "") -> None:
        self.api_key = api_key
        self.iam_token = iam_token or "no-iam-token-accepted"
        self.folder_id = folder_id
        self.behavior = Behavior()
        self.recorded = Recorded()
        app = Starlette(
            routes=[Route("/foundationModels/v1/completion", _Completion(self), methods=["POST"])]
        )
        super().__init__(app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/foundationModels/v1"
