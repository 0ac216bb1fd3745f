"""Call reports to a Telegram chat through the Bot API: a short summary, then the JSON call log.

The bot token is part of every request URL (``/bot<token>/<method>``), and httpx puts the URL into
its exceptions and its request log lines. So no httpx exception leaves this module (each becomes a
:class:`TelegramError` whose text names the method and the error kind only, raised outside the
``except`` block so it chains nothing), the token is registered with the log masker, and httpx's
own log lines are masked too. The messages are plain text: no ``parse_mode``, no escaping to get
wrong.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from voiceplatform.logging import SecretMaskingFilter, mask_secrets, register_secret
from vp_recorder.reports.call_log import call_start_ms

MESSAGE_LIMIT = 4096  # sendMessage text, in UTF-16 code units (the unit Telegram counts in)
CAPTION_LIMIT = 1024  # sendDocument caption
DOCUMENT_LIMIT_BYTES = 50 * 1024 * 1024  # bots upload at most 50 MB
LAST_TURNS = 6  # segments quoted at the end of the summary
TURN_TEXT_LIMIT = 300
ELLIPSIS = "…"


class TelegramError(Exception):
    """A failed Bot API call. ``retryable``: try again later (after ``retry_after`` seconds if set)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        error_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.error_code = error_code
        self.retry_after = retry_after


class TelegramReporter:
    def __init__(
        self,
        token: str,
        chat_id: str,
        api_url: str = "https://api.telegram.org",
        timeout_s: float = 10,
    ) -> None:
        if not token or not chat_id:
            raise ValueError("a Telegram reporter needs a bot token and a chat id")
        self._token = token
        self.chat_id = chat_id
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        register_secret(token)
        _mask_httpx_log_lines()

    def __repr__(self) -> str:  # the default would be harmless, but never show the token by accident
        return f"TelegramReporter(chat_id={self.chat_id!r}, api_url={self.api_url!r})"

    async def send_report(self, doc: Mapping[str, Any], log_file: Path | None) -> None:
        """The call's summary, then its log file as a document (when given)."""
        await self.send_summary(doc)
        if log_file is not None:
            await self.send_log_file(doc, log_file)

    async def send_summary(self, doc: Mapping[str, Any]) -> Any:
        payload = {"chat_id": self.chat_id, "text": clip(summary_text(doc), MESSAGE_LIMIT)}
        return await self._call("sendMessage", json=payload)

    async def send_log_file(self, doc: Mapping[str, Any], log_file: Path) -> Any:
        content = await asyncio.to_thread(log_file.read_bytes)
        if len(content) > DOCUMENT_LIMIT_BYTES:
            raise TelegramError(
                f"telegram sendDocument: log file of {len(content)} bytes is over the 50 MB bot limit",
                retryable=False,
            )
        data = {"chat_id": self.chat_id, "caption": clip(document_caption(doc), CAPTION_LIMIT)}
        files = {"document": (log_file.name, content, "application/json")}
        return await self._call("sendDocument", data=data, files=files)

    async def aclose(self) -> None:
        """Close the HTTP connections; the reporter can still be used (it reconnects)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _call(self, method: str, **request: Any) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        url = f"{self.api_url}/bot{self._token}/{method}"
        failure: TelegramError | None = None
        try:
            response = await self._client.post(url, **request)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # the type name only: httpx messages may carry the URL, and with it the token
            network = isinstance(exc, httpx.TransportError)
            retryable = network and not isinstance(exc, httpx.UnsupportedProtocol)
            failure = TelegramError(f"telegram {method}: {type(exc).__name__}", retryable=retryable)
        if failure is not None:
            raise failure  # outside the except block: no __context__ holding the httpx exception
        return self._result(method, response)

    def _result(self, method: str, response: httpx.Response) -> Any:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:  # not JSON: a proxy's error page, say
            body = None
        if not isinstance(body, dict):
            body = {}
        if status == 200 and body.get("ok") is True:
            return body.get("result")
        code = body.get("error_code")
        error_code = code if isinstance(code, int) else status
        description = str(body.get("description") or f"HTTP {status}")
        parameters = body.get("parameters")
        retry_after: float | None = None
        if isinstance(parameters, dict) and isinstance(parameters.get("retry_after"), int | float):
            retry_after = float(parameters["retry_after"])
        retryable = error_code == 429 or error_code >= 500 or status == 429 or status >= 500
        description = mask_secrets(description.replace(self._token, "***"))[:300]
        raise TelegramError(
            f"telegram {method} failed: {error_code} {description}",
            retryable=retryable,
            error_code=error_code,
            retry_after=retry_after,
        )


# ---- report text ---------------------------------------------------------------------------------


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-16 code units, ending with an ellipsis when cut."""
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(ELLIPSIS)
    kept: list[str] = []
    for ch in text:
        budget -= 2 if ord(ch) > 0xFFFF else 1  # outside the BMP: a surrogate pair
        if budget < 0:
            break
        kept.append(ch)
    return "".join(kept) + ELLIPSIS


def summary_text(doc: Mapping[str, Any]) -> str:
    """A short plain-text account of the call, in Russian and English."""
    metadata = doc.get("metadata") or {}
    lines = [
        "Звонок завершён / Call ended",
        f"Робот / Robot: {doc.get('robot') or '—'}",
        f"Канал / Channel: {doc.get('channel') or '—'}",
        f"Звонящий / Caller: {doc.get('caller') or '—'}",
        f"ID: {doc.get('call_id') or '—'}",
        f"Начало / Started: {_start_text(doc)}",
        f"Длительность / Duration: {_duration_text(doc.get('duration_sec'))}",
        f"Завершение / End reason: {doc.get('end_reason') or '—'}",
        f"Реплик / Turns: {_count(doc.get('turns'))}",
        f"Перебиваний / Barge-ins: {_count(metadata.get('barge_ins'))}",
        f"Ошибок / Errors: {_count(metadata.get('errors'))}",
    ]
    p50 = voice_to_voice_p50(doc.get("segments") or [])
    if p50 is not None:
        lines.append(f"Voice-to-voice p50: {p50} ms")
    last = _last_turn_lines(doc.get("segments") or [])
    if last:
        lines += ["", "Последние реплики / Last turns:", *last]
    return "\n".join(lines)


def document_caption(doc: Mapping[str, Any]) -> str:
    robot = doc.get("robot") or "—"
    return f"Лог звонка / Call log {doc.get('call_id') or '—'} ({robot}, {_start_text(doc)})"


def voice_to_voice_p50(segments: Sequence[Any]) -> int | None:
    """Median of the turns' voice-to-voice figures (as measured by the gateway), None without any."""
    values = [
        s["voice_to_voice_ms"]
        for s in segments
        if isinstance(s, Mapping) and isinstance(s.get("voice_to_voice_ms"), int | float)
    ]
    return round(statistics.median(values)) if values else None


def _last_turn_lines(segments: Sequence[Any]) -> list[str]:
    lines = []
    for s in [s for s in segments if isinstance(s, Mapping)][-LAST_TURNS:]:
        who = "Клиент" if s.get("role") == "user" else "Робот"
        interrupted = bool(s.get("interrupted"))
        # an interrupted reply: what the caller actually heard
        text = str((s.get("played_text") if interrupted else None) or s.get("text") or "")
        mark = " [перебит / interrupted]" if interrupted else ""
        lines.append(f"{who}: {clip(' '.join(text.split()), TURN_TEXT_LIMIT)}{mark}")
    return lines


def _start_text(doc: Mapping[str, Any]) -> str:
    start_ms = call_start_ms(doc)
    if start_ms <= 0:
        return "—"
    return f"{datetime.fromtimestamp(start_ms / 1000, tz=UTC):%Y-%m-%d %H:%M:%S} UTC"


def _duration_text(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds < 0:
        return "—"
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d} ({seconds:.1f} s)"


def _count(value: Any) -> int:
    """A figure the document holds either as a number or as the list of the things counted."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple):
        return len(value)
    return 0


def _mask_httpx_log_lines() -> None:
    """httpx logs every request URL at INFO: mask registered secrets (the bot token) in those lines."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, SecretMaskingFilter) for f in logger.filters):
        logger.addFilter(SecretMaskingFilter())
