"""A real HTTP server speaking the Gemini API's ``streamGenerateContent?alt=sse``, with scripted keys.

Started on 127.0.0.1 at a random port inside the test's event loop::

    async with GeminiStandIn() as server:
        server.on(quota_exhausted("gemini-2.5-flash"), key="key-A", model="gemini-2.5-flash")
        server.on(invalid_key(), key="key-B")
        ...  # providers.gemini.base_url = server.base_url

Wire format of docs/protocols/gemini.md: ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``
with the key in ``x-goog-api-key``; each SSE event is ``data: <GenerateContentResponse JSON>`` and a
blank line, text chunks are deltas, ``finishReason`` and the final ``usageMetadata`` come last, and
there is no ``[DONE]``. Errors are Google RPC bodies (``error.code/status/message/details[]``, with
``RetryInfo.retryDelay`` and ``ErrorInfo.reason``).

Rules are matched most specific first: (key, model), (key, any), (any, model), (any, any). Every
request is recorded with the key and model it used, and whether the client went away early.
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

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
PER_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
PER_DAY_QUOTA = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


@dataclass
class Rule:
    """How to answer matching requests. ``times=None``: always; ``times=n``: the first n only."""

    status: int | None = None  # an error status to answer with (None: stream the reply)
    body: dict[str, Any] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stall_s: float = 0.0  # wait this long before answering (a hanging model)
    times: int | None = None
    used: int = 0


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> Rule:
    body = {"error": {"code": code, "message": message, "status": status, "details": details or []}}
    return Rule(status=code, body=body)


def quota_exhausted(
    model: str,
    retry_delay: str | None = "12s",
    quota_id: str = PER_MINUTE_QUOTA,
    retry_after: str | None = None,
) -> Rule:
    details: list[dict[str, Any]] = [
        {
            "@type": QUOTA_FAILURE,
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": quota_id,
                    "quotaDimensions": {"model": model, "location": "global"},
                    "quotaValue": "15",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more"}]},
    ]
    if retry_delay is not None:
        details.append({"@type": RETRY_INFO, "retryDelay": retry_delay})
    message = "You exceeded your current quota, please check your plan and billing details."
    rule = google_error(429, "RESOURCE_EXHAUSTED", message, details)
    if retry_after is not None:
        rule.headers.append(("retry-after", retry_after))
    return rule


def invalid_key(echo_key: str = "") -> Rule:
    """400 API_KEY_INVALID, as Gemini answers a bad key (not 401). ``echo_key`` tests masking."""
    details = [
        {
            "@type": ERROR_INFO,
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ]
    message = "API key not valid. Please pass a valid API key." + (f" ({echo_key})" if echo_key else "")
    return google_error(400, "INVALID_ARGUMENT", message, details)


def permission_denied(echo_key: str = "") -> Rule:
    message = "Permission denied: API_KEY_SERVICE_BLOCKED" + (f" for {echo_key}" if echo_key else "")
    return google_error(403, "PERMISSION_DENIED", message)


def unauthenticated() -> Rule:
    return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")


def server_error(code: int = 500, times: int | None = 1, retry_after: str | None = None) -> Rule:
    status = {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(code, "INTERNAL")
    rule = google_error(code, status, "The model is overloaded. Please try again later.")
    rule.times = times
    if retry_after is not None:
        rule.headers.append(("retry-after", retry_after))
    return rule


def stall(seconds: float, times: int | None = None) -> Rule:
    return Rule(stall_s=seconds, times=times)


@dataclass
class Behavior:
    reply: str = "Здравствуйте. Чем могу помочь?"
    words_per_chunk: int = 1
    chunk_delay_s: float = 0.0
    finish_reason: str = "STOP"
    block_reason: str | None = None  # promptFeedback.blockReason and no candidates
    malformed_after: int | None = None  # a broken JSON event after this many chunks
    stop_after: int | None = None  # end the body after this many chunks, without finishReason
    error_after: int | None = None  # an error JSON event (503 UNAVAILABLE) after this many chunks
    crlf: bool = False  # CRLF event separators instead of LF
    prompt_tokens: int = 9


@dataclass
class RequestRecord:
    key: str  # raw: the stand-in plays Google, tests compare against key ids or their own keys
    model: str
    action: str
    query: dict[str, str]
    body: dict[str, Any]
    headers: dict[str, str]
    status: int = 200
    chunks_total: int = 0
    chunks_sent: int = 0
    finished: bool = False
    client_closed_early: bool = False
    closed_at: float = 0.0


@dataclass
class Recorded:
    requests: list[RequestRecord] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def used(self) -> list[tuple[str, str]]:
        """(key, model) of every request, in order."""
        return [(r.key, r.model) for r in self.requests]


def split_words(text: str, per_chunk: int) -> list[str]:
    words = re.findall(r"\S+\s*", text)
    return ["".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]


class _Generate:
    def __init__(self, server: GeminiStandIn) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        model, _, action = str(scope["path_params"]["target"]).partition(":")
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        query = dict(pair.split("=", 1) for pair in scope["query_string"].decode().split("&") if "=" in pair)
        key = headers.get("x-goog-api-key") or query.get("key", "")
        record = RequestRecord(key, model, action, query, json.loads(raw or b"{}"), headers)
        self.server.recorded.requests.append(record)
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                if (await receive())["type"] == "http.disconnect":
                    disconnected.set()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await self._answer(record, send, disconnected)
        except OSError:  # the client went away while we were writing
            self._closed_early(record)
        finally:
            watcher.cancel()

    async def _answer(self, record: RequestRecord, send: Send, disconnected: asyncio.Event) -> None:
        rule = self.server.match(record.key, record.model)
        if not record.key:
            rule = google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
        elif record.action != "streamGenerateContent" or record.query.get("alt") != "sse":
            rule = google_error(400, "INVALID_ARGUMENT", "stand-in serves streamGenerateContent?alt=sse only")
        if rule is not None and rule.stall_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(disconnected.wait(), rule.stall_s)
            if disconnected.is_set():
                self._closed_early(record)
                return
        if rule is not None and rule.status is not None:
            record.status = rule.status
            payload = json.dumps(rule.body or {}).encode()
            start_headers = [(b"content-type", b"application/json; charset=UTF-8")]
            start_headers += [(k.encode(), v.encode()) for k, v in rule.headers]
            await send({"type": "http.response.start", "status": rule.status, "headers": start_headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await self._stream(record, send, disconnected)

    async def _stream(self, record: RequestRecord, send: Send, disconnected: asyncio.Event) -> None:
        b = self.server.behavior
        sep = "\r\n\r\n" if b.crlf else "\n\n"

        async def event(obj: dict[str, Any] | str) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            await send(
                {"type": "http.response.body", "body": f"data: {data}{sep}".encode(), "more_body": True}
            )

        async def end() -> None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"x-stand-in", b"gemini")],
            }
        )
        usage = {"promptTokenCount": b.prompt_tokens, "totalTokenCount": b.prompt_tokens}
        if b.block_reason is not None:
            await event({"promptFeedback": {"blockReason": b.block_reason}, "usageMetadata": usage})
            await end()
            record.finished = True
            return
        pieces = split_words(b.reply, b.words_per_chunk)
        record.chunks_total = len(pieces)
        for i, piece in enumerate(pieces):
            if b.stop_after is not None and i >= b.stop_after:
                await end()
                return
            if b.malformed_after is not None and i >= b.malformed_after:
                await event('{"candidates": [{"content": ')
                await end()
                return
            if b.error_after is not None and i >= b.error_after:
                await event({"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}})
                await end()
                return
            if b.chunk_delay_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(disconnected.wait(), b.chunk_delay_s)
            if disconnected.is_set():
                self._closed_early(record)
                return
            await event(self._chunk(record.model, piece, None, usage))
            record.chunks_sent += 1
        final_usage = {
            "promptTokenCount": b.prompt_tokens,
            "candidatesTokenCount": len(pieces),
            "totalTokenCount": b.prompt_tokens + len(pieces),
        }
        await event(self._chunk(record.model, "", b.finish_reason, final_usage))
        await end()
        record.finished = True

    @staticmethod
    def _chunk(model: str, text: str, finish: str | None, usage: dict[str, int]) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "r1"}

    def _closed_early(self, record: RequestRecord) -> None:
        record.client_closed_early = True
        record.closed_at = time.monotonic()
        self.server.recorded.client_closed.set()


class GeminiStandIn(UvicornStandIn):
    def __init__(self) -> None:
        self.behavior = Behavior()
        self.recorded = Recorded()
        self.rules: dict[tuple[str | None, str | None], Rule] = {}
        app = Starlette(routes=[Route("/v1beta/models/{target}", _Generate(self), methods=["POST"])])
        super().__init__(app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1beta"

    def on(self, rule: Rule, key: str | None = None, model: str | None = None) -> Rule:
        """Answer requests with ``key`` (any if None) for ``model`` (any if None) by ``rule``."""
        self.rules[(key, model)] = rule
        return rule

    def clear(self, key: str | None = None, model: str | None = None) -> None:
        self.rules.pop((key, model), None)

    def match(self, key: str, model: str) -> Rule | None:
        for scope in ((key, model), (key, None), (None, model), (None, None)):
            rule = self.rules.get(scope)
            if rule is not None and (rule.times is None or rule.used < rule.times):
                rule.used += 1
                return rule
        return None
