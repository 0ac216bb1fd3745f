"""``gemini`` provider: Gemini ``streamGenerateContent?alt=sse`` over a pool of API keys × a model cascade.

``POST {base_url}/models/{model}:streamGenerateContent?alt=sse`` with the key in the
``x-goog-api-key`` header (never ``?key=``: a key must not sit in a URL, where proxies and httpx
log it). The answer is SSE: ``data: <GenerateContentResponse JSON>`` events whose
``candidates[0].content.parts[].text`` are deltas; ``finishReason`` and the final ``usageMetadata``
come last; there is no ``[DONE]``, the body just ends (docs/protocols/gemini.md).

Key/model rotation is the ONE retry inside a provider, on purpose: which key and which model to use
is this provider's own business, and a 429 on one (key, model) pair says nothing about the next
pair. Before any text was yielded, a 429 / RESOURCE_EXHAUSTED, an invalid key, a 404 model, a 5xx
or a connect error / timeout is reported to the ``KeyPool`` (health shared by every worker through
the injected ``KeyHealthStore``) and the next candidate is tried within the same call. Once a delta
was yielded nothing is retried: the caller may already be hearing it. Every other failure (a bad
request, a malformed stream, blocked content) is raised at once, and the shared retry/fallback layer
decides. Closing the iterator leaves the ``async with`` around the response, which closes the HTTP
stream at once.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self
from zoneinfo import ZoneInfo

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
    ProviderStatusError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.base import ProviderBase, ProviderContext
from voiceplatform.providers.keypool import (
    Attempt,
    Candidates,
    FailureKind,
    KeyHealthStore,
    KeyPool,
    KeysCoolingError,
    parse_duration,
    parse_retry_after,
    retry_in_from_text,
)
from voiceplatform.wire import ChatMessage

log = structlog.get_logger("vp_llm.gemini")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
DEFAULT_MODELS = ("gemini-2.5-flash", "gemini-2.0-flash")
DEFAULT_KEY_ENV = "GEMINI_API_KEYS"
# also read: the single-key name, and the numbered names of seed 004 (GEMINI_API_KEY_2, _3, …)
EXTRA_KEY_ENVS = ("GEMINI_API_KEY", *(f"GEMINI_API_KEY_{i}" for i in range(2, 10)))
MODEL_PREFIXES = ("gemini-", "gemma-", "learnlm-")
NORMAL_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "FINISH_REASON_UNSPECIFIED": "stop"}
BLOCKED_FINISH = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
INVALID_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
QUOTA_RESET_TZ = "America/Los_Angeles"  # daily quotas reset at midnight Pacific
# several connect failures in a row mean the network, not the key: stop rotating
MAX_CONSECUTIVE_CONNECTION_FAILURES = 2
ROTATION_BUDGET_TIMEOUTS = 2  # no new attempt starts after this many llm.timeout_s since the call began
MAX_ERROR_TEXT = 200
_SSE_FIELDS = frozenset({"data", "event", "id", "retry"})


class ContentBlockedError(ProviderError):
    """Gemini refused the prompt or stopped the answer (SAFETY, RECITATION, …): retrying will not help."""

    kind = "blocked"

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=False)


class GeminiOptions(BaseModel):
    """``llm.providers.gemini`` in a robot's config.json."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    models: list[str] = Field(default_factory=list)  # the cascade; empty: llm.model, else DEFAULT_MODELS
    key_env: str = DEFAULT_KEY_ENV  # comma-separated keys
    max_attempts: int = Field(default=8, ge=1, le=64)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # thinkingConfig.thinkingBudget per model: 2.5-flash thinks by default, and thinking tokens count
    # against maxOutputTokens (a short phone answer would come back empty). Older models reject the
    # field [U], so it is only sent to the models named here.
    thinking_budget: dict[str, int] = Field(
        default_factory=lambda: {"gemini-2.5-flash": 0, "gemini-2.5-flash-lite": 0}
    )


class _AttemptFailed(Exception):
    """One (key, model) attempt failed; ``kind`` None means the failure is not the pair's fault."""

    def __init__(
        self, error: ProviderError, kind: FailureKind | None, retry_after_s: float | None, text_started: bool
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.text_started = text_started


@dataclass
class _StreamState:
    text_started: bool = False
    healthy: bool = False  # a valid event arrived: the pair works
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _SseEvents:
    """Assembles ``data:`` lines into events; LF or CRLF separators, ``:`` comments ignored."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name not in _SSE_FIELDS:
            raise ValueError("not an SSE line")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def read_keys(robot: RobotConfig, key_env: str) -> list[str]:
    raw = [robot.secret(name) or "" for name in (key_env, *EXTRA_KEY_ENVS)]
    keys = [k for chunk in raw for k in re.split(r"[,;\s]+", chunk) if k]
    return list(dict.fromkeys(keys))


def seconds_until_daily_reset(now: float) -> float:
    local = datetime.fromtimestamp(now, ZoneInfo(QUOTA_RESET_TZ))
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(midnight.timestamp() - now, 0.0)


def _int(value: Any) -> int:
    try:
        return int(value or 0)  # proto JSON may send counts as strings
    except (TypeError, ValueError):
        return 0


class GeminiLlm(ProviderBase):
    name = "gemini"
    # the LLM service passes its bus-backed key health store (shared by every worker) as
    # ``ProviderContext.key_health``

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name), health=ctx.key_health)

    def __init__(
        self,
        robot: RobotConfig,
        *,
        client: httpx.AsyncClient | None = None,
        health: KeyHealthStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        cfg = robot.settings.llm
        try:
            self.options = GeminiOptions.model_validate(cfg.providers.get("gemini", {}))
        except ValidationError as exc:
            problems = [
                f"llm.providers.gemini.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            ]
            raise RobotConfigError(robot.name, problems) from None
        keys = read_keys(robot, self.options.key_env)
        if not keys:
            raise RobotConfigError(
                robot.name, [f"gemini: no API key in {self.options.key_env} or GEMINI_API_KEY"]
            )
        self._keys = keys
        for key in keys:
            register_secret(key)
        self.base_url = self.options.base_url.rstrip("/")
        configured = self.options.models or ([cfg.model] if cfg.model else list(DEFAULT_MODELS))
        self.models = tuple(dict.fromkeys(m.removeprefix("models/") for m in configured))
        self._clock = clock
        self.pool = KeyPool(self.name, keys, self.models, health, clock=clock)
        self._timeout_s = cfg.timeout_s
        timeout = httpx.Timeout(cfg.timeout_s, connect=min(self.options.connect_timeout_s, cfg.timeout_s))
        self._client = client or httpx.AsyncClient(timeout=timeout)

    # ---- the call ---------------------------------------------------------------------------------
    async def stream_complete(
        self, messages: Sequence[ChatMessage], options: LlmOptions
    ) -> AsyncGenerator[LlmChunk, None]:
        contents, system = self._contents(messages)
        models = self._cascade(options.model)
        plan = await self.pool.candidates(models)
        if not plan:
            raise self._nothing_usable(plan)
        # bounds a call's rotation: one stalled attempt may take a whole timeout, the next gets another
        deadline = time.monotonic() + ROTATION_BUDGET_TIMEOUTS * self._timeout_s
        failures: list[_AttemptFailed] = []
        for attempt in plan.attempts[: self.options.max_attempts]:
            if failures and (time.monotonic() > deadline or self._network_down(failures)):
                break
            if not self.pool.usable(attempt):
                continue  # another call of this process found the pair bad meanwhile
            body = self._body(contents, system, attempt.model, options)
            try:
                async with contextlib.aclosing(self._attempt(attempt, body)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                return
            except _AttemptFailed as failed:
                if failed.kind is not None:
                    await self.pool.report_failure(
                        attempt.key, attempt.model, failed.kind, failed.retry_after_s
                    )
                log.warning(
                    "gemini.attempt_failed",
                    key_id=attempt.key_id,
                    model=attempt.model,
                    reason=failed.kind.value if failed.kind else "request",
                    detail=str(failed.error)[:MAX_ERROR_TEXT],
                    text_started=failed.text_started,
                )
                if failed.kind is None or failed.text_started:
                    raise failed.error from None
                failures.append(failed)
        raise self._exhausted(failures, models)

    async def _attempt(self, attempt: Attempt, body: dict[str, Any]) -> AsyncGenerator[LlmChunk, None]:
        url = f"{self.base_url}/models/{attempt.model}:streamGenerateContent"
        headers = {"x-goog-api-key": attempt.key, "accept": "text/event-stream"}
        state = _StreamState()
        where = f"key {attempt.key_id}, {attempt.model}"
        try:
            async with self._client.stream(
                "POST", url, params={"alt": "sse"}, json=body, headers=headers
            ) as response:
                if response.status_code >= 400:
                    raw = await response.aread()
                    raise self._http_failure(attempt, response.status_code, raw, response.headers, False)
                events = _SseEvents()
                async for line in response.aiter_lines():
                    try:
                        data = events.feed(line)
                    except ValueError:
                        raise ProviderProtocolError(self.name, f"malformed SSE line ({where})") from None
                    if data is not None:
                        delta = await self._event(attempt, state, data)
                        if delta:
                            state.text_started = True
                            yield LlmChunk(text=delta)
                data = events.flush()  # an event not followed by a blank line before the body ended
                if data is not None:
                    delta = await self._event(attempt, state, data)
                    if delta:
                        state.text_started = True
                        yield LlmChunk(text=delta)
        except httpx.TimeoutException as exc:
            timed_out = ProviderTimeoutError(self.name, f"{type(exc).__name__} ({where})")
            raise _AttemptFailed(timed_out, FailureKind.CONNECTION, None, state.text_started) from None
        except httpx.TransportError as exc:
            refused = ProviderConnectionError(self.name, f"{type(exc).__name__} ({where})")
            raise _AttemptFailed(refused, FailureKind.CONNECTION, None, state.text_started) from None
        if state.finish is None:
            raise ProviderProtocolError(self.name, f"stream ended without finishReason ({where})")
        if state.finish not in NORMAL_FINISH and not state.text_started:
            raise ProviderProtocolError(
                self.name, f"answer finished with {state.finish} and no text ({where})"
            )
        meta = {
            "finish_reason": NORMAL_FINISH.get(state.finish, state.finish.lower()),
            "model": attempt.model,
            "key_id": attempt.key_id,
        }
        yield LlmChunk(
            prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens, meta=meta
        )

    async def _event(self, attempt: Attempt, state: _StreamState, data: str) -> str:
        """The text delta of one SSE event; raises on errors and blocks."""
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            raise ProviderProtocolError(self.name, "malformed JSON in stream") from None
        if not isinstance(obj, dict):
            raise ProviderProtocolError(self.name, "stream chunk is not an object")
        if "error" in obj:  # an error written into a stream that had already answered 200
            err = obj["error"]
            status = _int(err.get("code")) if isinstance(err, dict) else 0
            raw = json.dumps(obj).encode()
            raise self._http_failure(attempt, status or 500, raw, httpx.Headers(), state.text_started)
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise ContentBlockedError(self.name, f"prompt blocked: {feedback['blockReason']}")
        if not state.healthy:
            state.healthy = True
            await self.pool.report_success(attempt.key, attempt.model)
        usage = obj.get("usageMetadata")
        if isinstance(usage, dict):
            state.prompt_tokens = _int(usage.get("promptTokenCount"))
            # thinking tokens are billed as output
            state.completion_tokens = _int(usage.get("candidatesTokenCount")) + _int(
                usage.get("thoughtsTokenCount")
            )
        candidates = obj.get("candidates") or []
        if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
            raise ProviderProtocolError(self.name, "stream candidates are not a list of objects")
        if not candidates:
            return ""
        first = candidates[0]
        content = first.get("content") or {}
        parts = content.get("parts") or [] if isinstance(content, dict) else None
        if not isinstance(parts, list):
            raise ProviderProtocolError(self.name, "stream content parts are not a list")
        text = "".join(
            p["text"]
            for p in parts
            if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
        )
        finish = first.get("finishReason")
        if finish:
            state.finish = str(finish)
            if state.finish in BLOCKED_FINISH:
                raise ContentBlockedError(self.name, f"answer stopped: {state.finish}")
        return text

    # ---- errors -----------------------------------------------------------------------------------
    def _http_failure(
        self, attempt: Attempt, status: int, raw: bytes, headers: httpx.Headers, text_started: bool
    ) -> _AttemptFailed:
        """Classify a Google RPC error body: which pair-health failure it is, and for how long."""
        rpc_status, message, details = self._google_error(raw)
        reasons = {str(d.get("reason")) for d in details if d.get("@type") == ERROR_INFO}
        quota_ids = [
            str(v.get("quotaId", ""))
            for d in details
            if d.get("@type") == QUOTA_FAILURE
            for v in (d.get("violations") or [])
            if isinstance(v, dict)
        ]
        hints = [parse_duration(d.get("retryDelay")) for d in details if d.get("@type") == RETRY_INFO] + [
            parse_retry_after(headers.get("retry-after"), self._clock()),
            retry_in_from_text(message),
        ]
        known = [h for h in hints if h is not None]
        retry_after_s = max(known) if known else None  # RetryInfo and Retry-After both respected
        kind: FailureKind | None = None
        if status == 429 or rpc_status == "RESOURCE_EXHAUSTED":
            kind = FailureKind.QUOTA
            if any("PerDay" in q for q in quota_ids):
                retry_after_s = max(retry_after_s or 0.0, seconds_until_daily_reset(self._clock()))
        elif status in (401, 403) or reasons & INVALID_KEY_REASONS or "API key not valid" in message:
            kind = FailureKind.INVALID_KEY
        elif status == 404:
            kind = FailureKind.MODEL_NOT_FOUND
        elif status >= 500 or status == 408:
            kind = FailureKind.SERVER
        text = f"{rpc_status} {message}".strip()
        error = error_from_status(
            self.name, status, self._clean(f"{text} (key {attempt.key_id}, {attempt.model})")
        )
        return _AttemptFailed(error, kind, retry_after_s, text_started)

    @staticmethod
    def _google_error(raw: bytes) -> tuple[str, str, list[dict[str, Any]]]:
        """(``error.status``, ``error.message``, ``error.details``) of a Google RPC error body."""
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "", raw.decode("utf-8", "replace")[:MAX_ERROR_TEXT], []
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(obj, list) and obj and isinstance(obj[0], dict):
            err = obj[0].get("error")  # the non-SSE stream form wraps it in an array
        if not isinstance(err, dict):
            return "", "", []
        details = [d for d in err.get("details") or [] if isinstance(d, dict)]
        return str(err.get("status") or ""), str(err.get("message") or ""), details

    def _exhausted(self, failures: list[_AttemptFailed], models: Sequence[str]) -> ProviderError:
        """The error of a call whose every attempt failed: retryable if any failure was."""
        if not failures:
            return KeysCoolingError(self.name, self.pool.next_ready_s(models) or 1.0)
        retryable = [f for f in failures if f.error.retryable]
        if not retryable:
            return failures[-1].error  # every key invalid / model missing: a retry cannot help
        wait = self.pool.next_ready_s(models)
        if any(f.kind is FailureKind.QUOTA for f in failures) and wait is not None:
            return KeysCoolingError(self.name, wait)
        return retryable[-1].error

    def _nothing_usable(self, plan: Candidates) -> ProviderError:
        if plan.next_ready_s is None:
            return ProviderStatusError(
                self.name,
                401,
                f"every API key is disabled as invalid ({len(self._keys)} keys)",
                retryable=False,
            )
        return KeysCoolingError(self.name, plan.next_ready_s)

    @staticmethod
    def _network_down(failures: list[_AttemptFailed]) -> bool:
        tail = failures[-MAX_CONSECUTIVE_CONNECTION_FAILURES:]
        return len(tail) == MAX_CONSECUTIVE_CONNECTION_FAILURES and all(
            f.kind is FailureKind.CONNECTION for f in tail
        )

    def _clean(self, text: str) -> str:
        for key in self._keys:
            text = text.replace(key, "***")
        return mask_secrets(text)[:MAX_ERROR_TEXT]

    # ---- request ----------------------------------------------------------------------------------
    def _cascade(self, requested: str) -> tuple[str, ...]:
        """``options.model`` leads when it names a Gemini model; it may be another provider's model
        (one ``llm.model`` serves the whole fallback chain), and then it is ignored."""
        requested = requested.removeprefix("models/")
        if requested and (requested in self.models or requested.startswith(MODEL_PREFIXES)):
            return (requested, *(m for m in self.models if m != requested))
        return self.models

    @staticmethod
    def _contents(messages: Sequence[ChatMessage]) -> tuple[list[dict[str, Any]], str]:
        """Gemini roles are ``user`` and ``model``; system prompts go to ``systemInstruction``.
        Consecutive turns of one role are merged (older models insisted on alternation)."""
        system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
        contents: list[dict[str, Any]] = []
        for m in messages:
            if m.role == "system" or not m.content:
                continue
            role = "model" if m.role == "assistant" else "user"
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].append({"text": m.content})
            else:
                contents.append({"role": role, "parts": [{"text": m.content}]})
        if not contents:
            raise ProviderError("gemini", "nothing to send: no user or assistant message", retryable=False)
        return contents, system

    def _body(
        self, contents: list[dict[str, Any]], system: str, model: str, options: LlmOptions
    ) -> dict[str, Any]:
        config: dict[str, Any] = {
            "temperature": options.temperature,
            "maxOutputTokens": options.max_tokens,
            "candidateCount": 1,
        }
        budget = self.options.thinking_budget.get(model)
        if budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": budget}
        body: dict[str, Any] = {"contents": contents, "generationConfig": config}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        return body

    async def aclose(self) -> None:
        await self._client.aclose()
