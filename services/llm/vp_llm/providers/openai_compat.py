"""``openai`` provider: OpenAI-compatible Chat Completions streaming (Ollama, vLLM, llama.cpp, …).

``POST {base_url}/chat/completions`` with ``stream: true``; the answer is SSE: ``data: <json>`` lines,
``:`` keep-alive comments, and ``data: [DONE]`` last. Closing the iterator leaves the ``async with``
around the response, which closes the HTTP connection at once (that is how barge-in stops the
server generating). Errors are mapped to the shared provider error tree; the API key never appears
in a message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import httpx

from voiceplatform.config import RobotConfig
from voiceplatform.logging import mask_secrets, register_secret
from voiceplatform.providers import (
    LlmChunk,
    LlmOptions,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.wire import ChatMessage

DEFAULT_BASE_URL = "http://localhost:11434/v1"
KEY_NAME = "OPENAI_API_KEY"
MAX_ERROR_TEXT = 200


class OpenAICompatible(ProviderBase):
    name = "openai"

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    def __init__(self, robot: RobotConfig, client: httpx.AsyncClient | None = None) -> None:
        cfg = robot.settings.llm
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.model = cfg.model
        key = robot.secret(KEY_NAME)
        register_secret(key)
        self._key = key or "none"  # local servers ignore it, but clients must send one
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout_s))

    def _clean(self, text: str) -> str:
        text = text.replace(self._key, "***") if len(self._key) >= 4 else text
        return mask_secrets(text)[:MAX_ERROR_TEXT]

    def _body(self, messages: Sequence[ChatMessage], options: LlmOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
        }
        model = options.model or self.model
        if model:
            body["model"] = model
        return body

    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncIterator[LlmChunk]:
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "text/event-stream"}
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._client.stream(
                "POST", url, json=self._body(messages, options), headers=headers
            ) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise error_from_status(self.name, response.status_code, self._error_text(raw))
                async for line in response.aiter_lines():
                    done, chunk = self._parse_line(line)
                    if done:
                        return
                    if chunk is not None:
                        yield chunk
                raise ProviderProtocolError(self.name, "stream ended without [DONE]")
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(self.name, type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise ProviderConnectionError(self.name, type(exc).__name__) from None

    def _parse_line(self, line: str) -> tuple[bool, LlmChunk | None]:
        """(stream finished, chunk to yield) for one SSE line."""
        line = line.rstrip("\r")
        if line.startswith("event:") and line[6:].strip() == "error":
            raise ProviderProtocolError(self.name, "error event in stream")
        if not line.startswith("data:"):
            return False, None  # blank separators, ":" keep-alive comments, event:/id: fields
        data = line[5:].strip()
        if data.startswith("[DONE]"):
            return True, None
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            raise ProviderProtocolError(self.name, "malformed JSON in stream") from None
        if not isinstance(obj, dict):
            raise ProviderProtocolError(self.name, "stream chunk is not an object")
        if obj.get("error"):
            raise ProviderProtocolError(self.name, "error in stream: " + self._error_text(data.encode()))
        chunk = LlmChunk()
        usage = obj.get("usage")
        if isinstance(usage, dict):
            chunk.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            chunk.completion_tokens = int(usage.get("completion_tokens") or 0)
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict):
                raise ProviderProtocolError(self.name, "stream choice is not an object")
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                chunk.text += content
            if choice.get("finish_reason"):
                chunk.meta["finish_reason"] = str(choice["finish_reason"])
        return False, chunk

    def _error_text(self, raw: bytes) -> str:
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._clean(raw.decode("utf-8", "replace"))
        message: Any = ""
        if isinstance(obj, dict):
            err = obj.get("error")
            if isinstance(err, dict):
                message = err.get("message") or err.get("code") or ""
            elif isinstance(err, str):
                message = err
            else:
                message = obj.get("message", "")  # vLLM: {"object": "error", "message": ...}
        return self._clean(str(message))

    async def aclose(self) -> None:
        await self._client.aclose()
