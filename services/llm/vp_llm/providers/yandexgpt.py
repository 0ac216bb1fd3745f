"""``yandex`` LLM provider: YandexGPT ``completion`` over the native REST API, streamed.

Wire (docs/protocols/yandexgpt.md): ``POST {base_url}/completion`` with ``Authorization: Api-Key <key>`` (or
``Bearer <IAM token>``) and ``x-folder-id``; a lowerCamelCase body with ``completionOptions.stream =
true``. The answer is newline-delimited JSON (not SSE), one ``{"result": {...}}`` object per line, each
carrying the WHOLE text generated so far; the alternative's status stays ``ALTERNATIVE_STATUS_PARTIAL``
until the last line (FINAL, TRUNCATED_FINAL, CONTENT_FILTER or TOOL_CALLS), then the connection closes.
We turn the cumulative texts into deltas (:class:`CumulativeText`) and return as soon as a final line
arrives. A stream that ends before one is a :class:`ProviderProtocolError`.

Closing the iterator (barge-in) leaves the ``try`` around the response, which closes the HTTP
connection at once. No retries here: the service owns the one retry/fallback layer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Self

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voiceplatform.config import RobotConfig, RobotConfigError
from voiceplatform.logging import mask_secrets, register_secret
from voiceplatform.providers import (
    LlmChunk,
    LlmOptions,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.wire import ChatMessage

log = structlog.get_logger("vp_llm.yandexgpt")

DEFAULT_BASE_URL = "https://llm.api.cloud.yandex.net/foundationModels/v1"
DEFAULT_MODEL = "yandexgpt-lite"
API_KEY_NAME = "YANDEX_API_KEY"
IAM_TOKEN_NAME = "YANDEX_IAM_TOKEN"
FOLDER_ENV_NAME = "YANDEX_FOLDER_ID"  # seed 000: the folder may come from env like the key
MAX_LINE_BYTES = 1 << 20  # one cumulative line is at most a few KB; more means a broken stream
MAX_ERROR_TEXT = 200

# Yandex's gRPC code → HTTP status table (docs/protocols/yandex-speechkit.md) for errors with a gRPC code only
GRPC_TO_HTTP = {3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 12: 501, 13: 500, 14: 503, 16: 401}
FINAL_STATUSES = {
    "ALTERNATIVE_STATUS_FINAL": "stop",
    "ALTERNATIVE_STATUS_TRUNCATED_FINAL": "length",
    "ALTERNATIVE_STATUS_TOOL_CALLS": "tool_calls",
}
CONTENT_FILTER_STATUS = "ALTERNATIVE_STATUS_CONTENT_FILTER"
PARTIAL_STATUSES = {"ALTERNATIVE_STATUS_PARTIAL", "ALTERNATIVE_STATUS_UNSPECIFIED", ""}


class YandexGptOptions(BaseModel):
    """``llm.providers.yandex`` in a robot's config.json. Secrets never go here (env only)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    base_url: str = DEFAULT_BASE_URL
    folder_id: str = ""  # default: YANDEX_FOLDER_ID from env
    # model name (``yandexgpt-lite``, ``yandexgpt``, ``yandexgpt/rc``) → gpt://<folder>/<model>/latest
    model: str = ""
    model_uri: str = ""  # a full ``gpt://...`` URI (fine-tuned models); wins over ``model``
    reasoning_mode: Literal["DISABLED", "ENABLED_HIDDEN"] | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float | None = Field(default=None, gt=0)  # default: llm.timeout_s
    # the whole reply, so a stream trickling lines just under the per-line limit still ends
    total_timeout_s: float = Field(default=60.0, gt=0)
    # x-data-logging-enabled: Yandex keeps request data only when this is true (calls carry PII)
    data_logging: bool = False


class ContentFilteredError(ProviderError):
    """The vendor's content filter stopped the reply: asking the same provider again will not help."""

    kind = "content_filter"

    def __init__(self, provider: str) -> None:
        super().__init__(provider, "reply blocked by the content filter", retryable=False)


class CumulativeText:
    """Turns YandexGPT's cumulative texts into deltas.

    - A text that extends the previous one yields the new tail.
    - A repeat, or a shorter prefix of what we already emitted (e.g. the final line with trailing
      whitespace trimmed), yields nothing: text already emitted cannot be taken back, and nothing
      is missing.
    - A text that rewrites earlier characters (not seen in practice, but nothing in the API forbids
      it) yields nothing for that line and becomes the new base, so later lines emit only what they
      add after it. We never emit text the model has retracted and never repeat text; the cost is
      that the rewritten span is not spoken. Each rewrite is counted and logged (lengths only: the
      text is PII).
    """

    def __init__(self) -> None:
        self.base = ""
        self.rewrites = 0

    def advance(self, text: str) -> str:
        if text.startswith(self.base):
            delta = text[len(self.base) :]
            self.base = text
            return delta
        if self.base.startswith(text):
            return ""
        common = 0
        for old, new in zip(self.base, text, strict=False):
            if old != new:
                break
            common += 1
        self.rewrites += 1
        log.warning(
            "yandexgpt.text_rewritten",
            emitted_chars=len(self.base),
            common_prefix=common,
            new_chars=len(text),
        )
        self.base = text
        return ""


class _LineReader:
    """Newline-delimited lines from a byte stream (bytes split at b"\\n" keep UTF-8 intact)."""

    def __init__(self, chunks: AsyncIterator[bytes], provider: str) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._provider = provider

    async def next_line(self) -> bytes | None:
        """The next line, or None when the stream has ended."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > MAX_LINE_BYTES:
                raise ProviderProtocolError(self._provider, "stream line too long")
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                rest = bytes(self._buf)
                self._buf.clear()
                return rest or None
            self._buf += chunk


def _int64(value: Any) -> int:
    """Protobuf JSON int64 (a string, sometimes a number); anything else counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return 0


class YandexGpt(ProviderBase):
    name = "yandex"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    def __init__(self, robot: RobotConfig, *, client: httpx.AsyncClient | None = None) -> None:
        cfg = robot.settings.llm
        try:
            self.options = YandexGptOptions.model_validate(cfg.providers.get(self.name, {}))
        except ValidationError as exc:
            problems = [
                f"llm.providers.{self.name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors()
            ]
            raise RobotConfigError(robot.name, problems) from None
        opts = self.options
        self.folder_id = opts.folder_id or robot.secret(FOLDER_ENV_NAME) or _folder_of(opts.model_uri)
        if not self.folder_id and not opts.model_uri:
            raise RobotConfigError(
                robot.name, [f"llm.providers.{self.name}.folder_id is not set (nor {FOLDER_ENV_NAME})"]
            )
        api_key, iam_token = robot.secret(API_KEY_NAME), robot.secret(IAM_TOKEN_NAME)
        register_secret(api_key)
        register_secret(iam_token)
        self._secrets = [s for s in (api_key, iam_token) if s and len(s) >= 4]
        if api_key:
            self._authorization = f"Api-Key {api_key}"
        elif iam_token:
            self._authorization = f"Bearer {iam_token}"
        else:
            raise RobotConfigError(
                robot.name, [f"llm provider yandex needs {API_KEY_NAME} or {IAM_TOKEN_NAME}"]
            )
        self.url = opts.base_url.rstrip("/") + "/completion"
        self.default_model = cfg.model
        self.line_timeout_s = cfg.timeout_s
        self.first_token_timeout_s = opts.first_token_timeout_s or cfg.timeout_s
        # httpx's read timeout (no bytes at all) backs up the per-line deadlines enforced below
        read_s = max(self.first_token_timeout_s, self.line_timeout_s)
        self._timeout = httpx.Timeout(
            connect=min(opts.connect_timeout_s, cfg.timeout_s), read=read_s, write=cfg.timeout_s, pool=read_s
        )
        self._client = client or httpx.AsyncClient(timeout=self._timeout)

    # ---- request ------------------------------------------------------------------------------
    def model_uri(self, options: LlmOptions) -> str:
        """A full URI given per turn wins; then this provider's own options (they are the most specific:
        ``llm.model`` may name another vendor's model when yandex is a fallback); then ``llm.model``."""
        if options.model.startswith("gpt://"):
            return options.model
        if self.options.model_uri:
            return self.options.model_uri
        name = self.options.model or options.model or self.default_model or DEFAULT_MODEL
        if "/" not in name:
            name += "/latest"
        return f"gpt://{self.folder_id}/{name}"

    def body(self, messages: Sequence[ChatMessage], options: LlmOptions) -> dict[str, Any]:
        completion: dict[str, Any] = {
            "stream": True,
            # Yandex accepts 0..1; our config allows up to 2 (other vendors), so clamp
            "temperature": min(max(options.temperature, 0.0), 1.0),
            "maxTokens": str(options.max_tokens),  # int64 → string in protobuf JSON
        }
        if self.options.reasoning_mode:
            completion["reasoningOptions"] = {"mode": self.options.reasoning_mode}
        return {
            "modelUri": self.model_uri(options),
            "completionOptions": completion,
            # a message must hold exactly one of text/toolCallList/toolResultList: empty text is not one
            "messages": [{"role": m.role, "text": m.content} for m in messages if m.content.strip()],
        }

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {
            "Authorization": self._authorization,
            "Accept": "application/json",
            "x-client-request-id": request_id,
            "x-data-logging-enabled": "true" if self.options.data_logging else "false",
        }
        if self.folder_id:
            headers["x-folder-id"] = self.folder_id
        return headers

    # ---- stream -------------------------------------------------------------------------------
    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        request_id = str(uuid.uuid4())
        request = self._client.build_request(
            "POST",
            self.url,
            json=self.body(messages, options),
            headers=self._headers(request_id),
            timeout=self._timeout,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.total_timeout_s
        response: httpx.Response | None = None
        try:
            try:
                async with asyncio.timeout(self.first_token_timeout_s):
                    response = await self._client.send(request, stream=True)
            except TimeoutError:
                raise ProviderTimeoutError(
                    self.name, f"no answer in {self.first_token_timeout_s:g}s"
                ) from None
            if response.status_code >= 400:
                raw = await response.aread()
                detail = self._error_text(raw)
                log.warning(
                    "yandexgpt.http_error", status=response.status_code, request_id=request_id, detail=detail
                )
                raise error_from_status(self.name, response.status_code, detail)
            lines = _LineReader(response.aiter_bytes(), self.name)
            text = CumulativeText()
            got_line = False
            while True:
                limit = self.line_timeout_s if got_line else self.first_token_timeout_s
                wait = min(limit, deadline - loop.time())
                try:
                    async with asyncio.timeout(wait):
                        raw_line = await lines.next_line()
                except TimeoutError:
                    raise ProviderTimeoutError(
                        self.name, self._timeout_reason(got_line, wait, limit)
                    ) from None
                if raw_line is None:
                    raise ProviderProtocolError(self.name, "stream ended without a final alternative")
                result = self._parse_line(raw_line)
                if result is None:
                    continue
                got_line = True
                chunk, final = self._chunk(result, text)
                if final:
                    yield chunk
                    return
                if chunk.text:
                    yield chunk
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(self.name, type(exc).__name__) from None
        except httpx.RemoteProtocolError:
            if response is None:
                raise ProviderConnectionError(self.name, "server disconnected without a response") from None
            raise ProviderProtocolError(self.name, "stream truncated: connection closed mid-body") from None
        except httpx.TransportError as exc:
            raise ProviderConnectionError(self.name, type(exc).__name__) from None
        finally:
            if response is not None:
                await response.aclose()

    @staticmethod
    def _timeout_reason(got_line: bool, wait: float, limit: float) -> str:
        if wait < limit:
            return "reply took longer than total_timeout_s"
        if not got_line:
            return f"no reply line in {limit:g}s"
        return f"stream stalled for {limit:g}s"

    def _parse_line(self, raw: bytes) -> dict[str, Any] | None:
        """The ``result`` object of one line, or None for a blank line."""
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ProviderProtocolError(self.name, "stream line is not UTF-8") from None
        if not line:
            return None
        if line.startswith("data:"):
            # the framing is [T] (docs/protocols/yandexgpt.md; one source claims SSE): accept an SSE prefix
            line = line[5:].strip()
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ProviderProtocolError(self.name, "malformed JSON line in stream") from None
        if not isinstance(obj, dict):
            raise ProviderProtocolError(self.name, "stream line is not an object")
        if "error" in obj:
            raise self._stream_error(obj)
        result = obj.get("result")
        if not isinstance(result, dict):
            raise ProviderProtocolError(self.name, "stream line without a result object")
        return result

    def _chunk(self, result: dict[str, Any], text: CumulativeText) -> tuple[LlmChunk, bool]:
        """(chunk to yield, whether this line ends the reply) for one ``result``."""
        alternatives = result.get("alternatives") or []
        if not isinstance(alternatives, list) or not all(isinstance(a, dict) for a in alternatives):
            raise ProviderProtocolError(self.name, "alternatives is not a list of objects")
        alternative: dict[str, Any] = alternatives[0] if alternatives else {}
        status = str(alternative.get("status") or "")
        if status == CONTENT_FILTER_STATUS:
            raise ContentFilteredError(self.name)
        message = alternative.get("message")
        cumulative = message.get("text") if isinstance(message, dict) else None
        # tool-call lines have toolCallList instead of text: no text to speak
        chunk = LlmChunk(text=text.advance(cumulative) if isinstance(cumulative, str) else "")
        if status not in FINAL_STATUSES:
            if status not in PARTIAL_STATUSES:
                log.warning("yandexgpt.unknown_status", status=status[:64])  # tolerant: treat as partial
            return chunk, False
        usage = result.get("usage")
        if isinstance(usage, dict):
            chunk.prompt_tokens = _int64(usage.get("inputTextTokens"))
            chunk.completion_tokens = _int64(usage.get("completionTokens"))
        chunk.meta["finish_reason"] = FINAL_STATUSES[status]
        if isinstance(result.get("modelVersion"), str):
            chunk.meta["model_version"] = result["modelVersion"][:64]
        if text.rewrites:
            chunk.meta["text_rewrites"] = str(text.rewrites)
        return chunk, True

    # ---- errors -------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return mask_secrets(text)[:MAX_ERROR_TEXT]

    def _stream_error(self, obj: dict[str, Any]) -> ProviderError:
        """A ``{"error": {...}}`` line after the 200 (gRPC-gateway reports late errors this way)."""
        err = obj.get("error")
        status = 0
        if isinstance(err, dict):
            status = _int64(err.get("httpCode")) or GRPC_TO_HTTP.get(
                _int64(err.get("grpcCode", err.get("code"))), 0
            )
        detail = self._error_text(json.dumps(obj).encode())
        if status >= 400:
            return error_from_status(self.name, status, "in stream: " + detail)
        return ProviderProtocolError(self.name, "error in stream: " + detail)

    def _error_text(self, raw: bytes) -> str:
        """The message of a Yandex error body, tolerant of its shapes (the body is [T] evidence):
        ``{"error": {"grpcCode", "httpCode", "message", "httpStatus", "details"}}``, the plain gRPC
        status ``{"code", "message", "details"}``, or anything else (raw text, cleaned)."""
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._clean(raw.decode("utf-8", "replace").strip())
        if not isinstance(obj, dict):
            return self._clean(str(obj))
        err = obj.get("error", obj)
        if isinstance(err, str):
            return self._clean(err)
        if not isinstance(err, dict):
            return ""
        message = str(err.get("message") or err.get("httpStatus") or "")
        code = err.get("grpcCode", err.get("code"))
        if isinstance(code, int) and not isinstance(code, bool):
            message = f"{message} (grpc {code})".strip()
        return self._clean(message)

    async def aclose(self) -> None:
        await self._client.aclose()


def _folder_of(model_uri: str) -> str:
    """``gpt://<folder>/<model>/...`` → folder (for x-folder-id when only a full URI is configured)."""
    if model_uri.startswith("gpt://"):
        return model_uri[len("gpt://") :].split("/", 1)[0]
    return ""
