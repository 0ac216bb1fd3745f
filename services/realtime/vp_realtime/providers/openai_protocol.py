"""The OpenAI Realtime event protocol over WebSocket, spoken by Yandex's realtime API and OpenAI's.

Facts: docs/protocols/openai-realtime.md. Both vendors get the GA event names and the GA ``session.update``
shape (Yandex's official sample uses it, without ``"type": "realtime"``); the pre-GA names
(``response.audio.delta``, ``conversation.item.created`` …) are accepted too, because Yandex sends
some of them [T]. What is marked [U] there (truncate/cancel support on Yandex, output rates other
than 24 kHz) is handled tolerantly: an ``error`` event in answer is logged and counted, never fatal.

One ``OpenAiRealtimeConnection`` is one session: no SDK, no retries here (the session layer decides).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus, InvalidURI

from voiceplatform.logging import mask_secrets
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.realtime import (
    AudioDelta,
    InputTranscript,
    ProviderNotice,
    RealtimeEvent,
    RealtimeSessionConfig,
    ResponseDone,
    ResponseItem,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
)

_AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
_AUDIO_TRANSCRIPT_DELTAS = ("response.output_audio_transcript.delta", "response.audio_transcript.delta")
_TEXT_DELTAS = ("response.output_text.delta", "response.text.delta")
# the socket may carry one audio delta of several seconds (base64): allow more than the 1 MiB default
MAX_FRAME_BYTES = 16 * 1024 * 1024


def session_update(
    config: RealtimeSessionConfig, *, ga_type: bool, modalities: list[str], transcription_model: str = ""
) -> dict[str, Any]:
    turn_detection = {
        "type": "server_vad",
        "threshold": config.vad_threshold,
        "silence_duration_ms": config.silence_duration_ms,
        "prefix_padding_ms": config.prefix_padding_ms,
        "create_response": True,
        # the server stops its own reply when the caller speaks; we still cancel + truncate (Barge-in)
        "interrupt_response": True,
    }
    output: dict[str, Any] = {"format": {"type": "audio/pcm", "rate": config.output_rate}}
    if config.voice:
        output["voice"] = config.voice
    session: dict[str, Any] = {
        "instructions": config.instructions,
        "output_modalities": modalities,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": config.input_rate},
                "turn_detection": turn_detection,
            },
            "output": output,
        },
    }
    if transcription_model:
        # OpenAI transcribes the caller only when asked; Yandex's sample gets it without asking
        session["audio"]["input"]["transcription"] = {"model": transcription_model}
    if ga_type:
        session["type"] = "realtime"
    return {"type": "session.update", "session": session}


def history_item(role: str, text: str) -> dict[str, Any]:
    # GA content part types; assistant text as "output_text" is [U] for Yandex (tolerated if refused)
    part = {"type": "input_text" if role == "user" else "output_text", "text": text}
    return {"type": "conversation.item.create", "item": {"type": "message", "role": role, "content": [part]}}


class OpenAiRealtimeConnection:
    def __init__(self, provider: str, ws: ClientConnection) -> None:
        self.provider = provider
        self._ws = ws
        self._closing = False
        # per response: which transcript stream is used (audio transcript or text), the first one wins
        self._transcript_kind: dict[str, str] = {}
        self._early: list[RealtimeEvent] = []  # notices from the handshake, yielded first

    @classmethod
    async def open(
        cls,
        provider: str,
        url: str,
        headers: dict[str, str],
        update: dict[str, Any],
        history: tuple[tuple[str, str], ...],
        *,
        timeout_s: float,
    ) -> OpenAiRealtimeConnection:
        """Connect, wait for ``session.created``, configure (``update``), seed the conversation."""
        try:
            ws = await asyncio.wait_for(
                connect(
                    url,
                    additional_headers=headers,
                    max_size=MAX_FRAME_BYTES,
                    open_timeout=None,
                    compression=None,
                    proxy=None,
                ),
                timeout_s,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            raise error_from_status(provider, exc.response.status_code, mask_secrets(body[:200])) from None
        except TimeoutError:
            raise ProviderTimeoutError(provider, "connect timed out") from None
        except (OSError, InvalidURI) as exc:
            raise ProviderConnectionError(provider, type(exc).__name__) from None
        conn = cls(provider, ws)
        try:
            await asyncio.wait_for(conn._handshake(update, history), timeout_s)
        except TimeoutError:
            await conn.aclose()
            raise ProviderTimeoutError(provider, "no session.created/updated in time") from None
        except BaseException:
            await conn.aclose()
            raise
        return conn

    async def _handshake(self, update: dict[str, Any], history: tuple[tuple[str, str], ...]) -> None:
        await self._expect("session.created")
        await self._send(update)
        await self._expect("session.updated")
        for role, text in history:
            await self._send(history_item(role, text))

    async def _expect(self, wanted: str) -> None:
        while True:
            event = await self._receive()
            if event.get("type") == wanted:
                return
            if event.get("type") == "malformed":
                self._early.append(ProviderNotice("malformed_event", "not a JSON object with a type"))
            if event.get("type") == "error":
                code, message = _error_fields(event)
                raise ProviderProtocolError(self.provider, f"{wanted} refused: {code} {message}".strip())

    async def _receive(self) -> dict[str, Any]:
        try:
            raw = await self._ws.recv()
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None
        # a malformed frame is skipped here as everywhere (counted by the session as a notice later)
        return _parse(raw) or {"type": "malformed"}

    def _closed_error(self, exc: ConnectionClosed) -> ProviderError:
        rcvd = exc.rcvd
        detail = (
            f"closed by the provider ({rcvd.code} {mask_secrets(rcvd.reason)[:80]})" if rcvd else "closed"
        )
        return ProviderConnectionError(self.provider, detail.strip())

    async def _send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", f"evt_{uuid.uuid4().hex[:16]}")
        try:
            await self._ws.send(json.dumps(event, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None

    # ---- RealtimeConnection ------------------------------------------------------------------
    async def events(self) -> AsyncIterator[RealtimeEvent]:
        while self._early:
            yield self._early.pop(0)
        while True:
            try:
                raw = await self._ws.recv()
            except ConnectionClosedOK as exc:
                if self._closing:
                    return
                raise self._closed_error(exc) from None
            except ConnectionClosed as exc:
                if self._closing:
                    return
                raise self._closed_error(exc) from None
            event = _parse(raw)
            if event is None:
                yield ProviderNotice("malformed_event", "not a JSON object with a type")
                continue
            mapped = self._map(event)
            if mapped is not None:
                yield mapped

    def _map(self, event: dict[str, Any]) -> RealtimeEvent | None:
        kind = event.get("type")
        if kind in _AUDIO_DELTAS:
            try:
                pcm = base64.b64decode(str(event.get("delta", "")), validate=True)
            except (binascii.Error, ValueError):
                return ProviderNotice("bad_audio", "audio delta is not base64")
            if len(pcm) % 2:
                return ProviderNotice("bad_audio", "odd number of PCM16 bytes")
            return AudioDelta(_str(event, "response_id"), _str(event, "item_id"), pcm)
        if kind in _AUDIO_TRANSCRIPT_DELTAS or kind in _TEXT_DELTAS:
            response_id = _str(event, "response_id")
            family = "audio" if kind in _AUDIO_TRANSCRIPT_DELTAS else "text"
            if self._transcript_kind.setdefault(response_id, family) != family:
                return None  # both streams carry the same words when both modalities are on
            return TranscriptDelta(response_id, _str(event, "item_id"), str(event.get("delta", "")))
        if kind == "input_audio_buffer.speech_started":
            return SpeechStarted(_str(event, "item_id"), _int(event.get("audio_start_ms")))
        if kind == "input_audio_buffer.speech_stopped":
            return SpeechStopped(_str(event, "item_id"), _int(event.get("audio_end_ms")))
        if kind == "conversation.item.input_audio_transcription.completed":
            return InputTranscript(_str(event, "item_id"), str(event.get("transcript") or ""))
        if kind == "conversation.item.input_audio_transcription.failed":
            return InputTranscript(_str(event, "item_id"), "", failed=True)
        if kind == "response.created":
            return ResponseStarted(_str(_dict(event.get("response")), "id"))
        if kind == "response.output_item.added":
            item = _dict(event.get("item"))
            if item.get("type", "message") == "message":
                return ResponseItem(_str(event, "response_id"), _str(item, "id"))
            return None
        if kind == "response.done":
            response = _dict(event.get("response"))
            response_id = _str(response, "id")
            self._transcript_kind.pop(response_id, None)
            usage = _dict(response.get("usage"))
            detail = {
                f"{side}_{k}": _int(v)
                for side in ("input", "output")
                for k, v in _dict(usage.get(f"{side}_token_details")).items()
                if isinstance(v, int)
            }
            return ResponseDone(
                response_id,
                str(response.get("status") or "completed"),
                input_tokens=_int(usage.get("input_tokens")),
                output_tokens=_int(usage.get("output_tokens")),
                detail=detail,
            )
        if kind == "error":
            return ProviderNotice(*_error_fields(event))
        return None  # session.updated, rate_limits.updated, *.done bookkeeping …

    async def append_audio(self, pcm: bytes) -> None:
        await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})

    async def create_response(self, instructions: str = "") -> None:
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        await self._send(event)

    async def cancel_response(self) -> None:
        await self._send({"type": "response.cancel"})

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": max(0, audio_end_ms),
            }
        )

    async def aclose(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 2.0)


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    if isinstance(raw, bytes):
        return None
    try:
        event = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _error_fields(event: dict[str, Any]) -> tuple[str, str]:
    error = _dict(event.get("error"))
    code = str(error.get("code") or error.get("type") or "error")
    return code, mask_secrets(str(error.get("message") or ""))[:200]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
