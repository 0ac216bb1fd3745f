"""A real HTTP server speaking OpenAI-compatible Chat Completions streaming (SSE), with knobs.

Started on 127.0.0.1 at a random port inside the test's event loop::

    async with OpenAIStandIn() as server:
        server.behavior.reply = "Привет. Как дела?"
        ...  # robot llm.base_url = server.base_url

Knobs (``server.behavior``): the reply text (streamed one word per chunk), a delay per chunk, a
status code to fail with before the stream, a malformed line after N chunks, and stopping mid-stream
without ``[DONE]``. Records every request and whether the client closed a stream early.
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


@dataclass
class Behavior:
    reply: str = "Здравствуйте. Чем могу помочь?"
    chunk_delay_s: float = 0.0
    fail_status: int | None = None
    fail_message: str = "upstream failed"
    malformed_after: int | None = None  # send a broken JSON line after this many chunks
    stop_after: int | None = None  # close the stream after this many chunks, no [DONE]
    prompt_tokens: int = 12
    keepalive_comments: bool = True


@dataclass
class StreamRecord:
    chunks_total: int = 0
    chunks_sent: int = 0
    finished: bool = False  # [DONE] was sent
    client_closed_early: bool = False
    closed_at: float = 0.0


@dataclass
class Recorded:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


def split_deltas(text: str) -> list[str]:
    """One delta per word, each with the whitespace that follows it (like a tokenizer would)."""
    return re.findall(r"\S+\s*", text)


class _ChatCompletions:
    def __init__(self, server: OpenAIStandIn) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        rec = self.server.recorded
        rec.requests.append(json.loads(body or b"{}"))
        rec.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        b = self.server.behavior
        if b.fail_status is not None:
            payload = json.dumps({"error": {"message": b.fail_message, "type": "server_error", "code": None}})
            await send(
                {
                    "type": "http.response.start",
                    "status": b.fail_status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload.encode()})
            return

        stream = StreamRecord()
        rec.streams.append(stream)
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            deltas = split_deltas(b.reply)
            stream.chunks_total = len(deltas)
            lines = [": keep-alive\n\n"] if b.keepalive_comments else []
            first = {"role": "assistant", "content": ""}
            lines.append(self._data({"choices": [{"index": 0, "delta": first, "finish_reason": None}]}))
            for line in lines:
                await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
            for i, delta in enumerate(deltas):
                if b.stop_after is not None and i >= b.stop_after:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if b.malformed_after is not None and i >= b.malformed_after:
                    await send(
                        {"type": "http.response.body", "body": b'data: {"choices": [\n\n', "more_body": True}
                    )
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if b.chunk_delay_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(disconnected.wait(), b.chunk_delay_s)
                if disconnected.is_set():
                    self._closed_early(stream)
                    return
                chunk = {"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
                await send(
                    {"type": "http.response.body", "body": self._data(chunk).encode(), "more_body": True}
                )
                stream.chunks_sent += 1
            tail = [
                self._data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                self._data(
                    {
                        "choices": [],
                        "usage": {
                            "prompt_tokens": b.prompt_tokens,
                            "completion_tokens": len(deltas),
                            "total_tokens": b.prompt_tokens + len(deltas),
                        },
                    }
                ),
                "data: [DONE]\n\n",
            ]
            for line in tail:
                await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
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

    @staticmethod
    def _data(obj: dict[str, Any]) -> str:
        base = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "stand-in",
        }
        return "data: " + json.dumps({**base, **obj}, ensure_ascii=False) + "\n\n"


class OpenAIStandIn(UvicornStandIn):
    def __init__(self) -> None:
        self.behavior = Behavior()
        self.recorded = Recorded()
        app = Starlette(routes=[Route("/v1/chat/completions", _ChatCompletions(self), methods=["POST"])])
        super().__init__(app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
