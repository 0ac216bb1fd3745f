"""``elevenlabs`` TTS: HTTP streaming or the WebSocket ``stream-input`` API (docs/protocols/elevenlabs.md).

HTTP: ``POST {base_url}/v1/text-to-speech/{voice_id}/stream?output_format=…`` answers with a chunked
raw audio body. WS: ``{ws_url}/v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=…``;
we send the open message (``text: " "``), the sentence with ``flush``, then end-of-input
(``text: ""``) and read ``{"audio": <base64>, "isFinal": …}`` messages. Both yield 16-bit mono PCM
at ``sample_rate`` (``pcm_*`` is raw S16LE; ``ulaw_8000`` / ``alaw_8000`` are G.711, decoded here).

The key (env ``TTS_API_KEY``) goes in the ``xi-api-key`` header, never in a URL or a message body.
An optional proxy (``socks5://``, ``socks5h://``, ``http://``; option ``proxy`` or env ``TTS_PROXY``)
is handled by httpx (``httpx[socks]``) and by websockets (``python-socks``): no SOCKS code of ours.
Closing the iterator leaves the ``async with`` around the response / socket, which closes it at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import importlib.util
import json
import logging
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
    WebSocketException,
)

from voiceplatform.config import RobotConfig
from voiceplatform.logging import mask_secrets, register_secret
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.base import ProviderBase, ProviderContext

PROVIDER = "elevenlabs"
KEY_NAME = "TTS_API_KEY"  # seed 000's name for the ElevenLabs key
PROXY_ENV = "TTS_PROXY"
MAX_ERROR_TEXT = 200
log = structlog.get_logger("vp_tts.elevenlabs")

# Voice ids are 20 alphanumerics in every example seen; a range keeps custom ids working and still
# tells them from other engines' voice names ("alena", "ru+f3") passed through the service.
_VOICE_ID = re.compile(r"^[A-Za-z0-9]{16,40}$")
_PCM_FORMAT = re.compile(r"^pcm_(8000|16000|22050|24000|32000|44100|48000)$")
# vendor error codes (detail.status) → the HTTP status they come with (docs/protocols/elevenlabs.md), used to
# map WebSocket error frames, whose exact shape is [U]
_STATUS_BY_CODE = {
    "invalid_api_key": 401,
    "quota_exceeded": 401,
    "unauthorized": 401,
    "only_for_creator+": 403,
    "too_many_concurrent_requests": 429,
    "system_busy": 429,
    "voice_not_found": 400,
    "max_character_limit_exceeded": 400,
}


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    """int16 lookup tables (G.711 μ-law and A-law byte → linear sample)."""
    b = np.arange(256, dtype=np.int32)
    u = ~b & 0xFF
    mag = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)
    ulaw = np.where(u & 0x80, 0x84 - mag, mag - 0x84)
    a = b ^ 0x55
    exp, mant = (a >> 4) & 7, a & 0x0F
    amag = np.where(exp == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(exp - 1, 0))
    alaw = np.where(a & 0x80, amag, -amag)
    return ulaw.astype("<i2"), alaw.astype("<i2")


ULAW_TO_PCM16, ALAW_TO_PCM16 = _g711_tables()


class VoiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stability: float | None = Field(default=None, ge=0, le=1)
    similarity_boost: float | None = Field(default=None, ge=0, le=1)
    style: float | None = Field(default=None, ge=0, le=1)
    use_speaker_boost: bool | None = None
    speed: float | None = Field(default=None, gt=0, le=4)


class ElevenLabsOptions(BaseModel):
    """``tts.providers.elevenlabs`` in a robot's config.json."""

    model_config = ConfigDict(extra="forbid")
    transport: Literal["http", "ws"] = "http"
    base_url: str = "https://api.elevenlabs.io"
    ws_url: str = ""  # default: base_url with https→wss / http→ws
    voice_id: str = ""  # default: tts.voice when it is an ElevenLabs voice id
    model_id: str = "eleven_flash_v2_5"
    output_format: str = "pcm_16000"
    language_code: str = ""
    voice_settings: VoiceSettings | None = None
    optimize_streaming_latency: int | None = Field(default=None, ge=0, le=4)  # HTTP only
    chunk_length_schedule: list[int] | None = None  # WS only, each 50..500
    proxy: str = ""  # overrides env TTS_PROXY
    connect_timeout_s: float = Field(default=5.0, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)  # longest wait for the next piece of audio

    @field_validator("output_format")
    @classmethod
    def _decodable_format(cls, value: str) -> str:
        # mp3_* and opus_* exist too, but we would need a decoder for them: PCM out is the contract
        if not (_PCM_FORMAT.match(value) or value in ("ulaw_8000", "alaw_8000")):
            raise ValueError(f"output_format {value!r} not supported: use pcm_<rate>, ulaw_8000 or alaw_8000")
        return value

    @field_validator("voice_id")
    @classmethod
    def _voice_id_shape(cls, value: str) -> str:
        if value and not _VOICE_ID.match(value):
            raise ValueError("voice_id must be an ElevenLabs voice id (letters and digits)")
        return value

    @field_validator("chunk_length_schedule")
    @classmethod
    def _schedule_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not all(50 <= n <= 500 for n in value):
            raise ValueError("chunk_length_schedule values must be 50..500")
        return value


@dataclass
class TtsUsage:
    """Totals of this provider instance, for cost: characters sent and the vendor's own count."""

    requests: int = 0
    characters: int = 0
    billed_characters: int = 0  # from the ``character-cost`` / ``x-character-count`` header [U]


class _SecretMaskingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs handshake headers at DEBUG: format the line, then mask registered secrets."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, mask_secrets(text), **kwargs)


class _AudioDecoder:
    """Vendor audio bytes → PCM16 bytes; a PCM sample split across two chunks is carried over."""

    def __init__(self, output_format: str) -> None:
        self._table = {"ulaw_8000": ULAW_TO_PCM16, "alaw_8000": ALAW_TO_PCM16}.get(output_format)
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        if self._table is not None:
            return self._table[np.frombuffer(data, dtype=np.uint8)].tobytes()
        data = self._carry + data
        cut = len(data) - len(data) % 2
        self._carry = data[cut:]
        return data[:cut]

    @property
    def pending(self) -> int:
        return len(self._carry)

    def finish(self) -> None:
        if self._carry:
            raise ProviderProtocolError(PROVIDER, "audio ended in the middle of a 16-bit sample")


class ElevenLabsTts(ProviderBase):
    name = PROVIDER
    # built per robot (its keys and options): TtsService.provider(name, robot)

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    def __init__(self, robot: RobotConfig, *, client: httpx.AsyncClient | None = None) -> None:
        cfg = robot.settings.tts
        try:
            self.options = ElevenLabsOptions.model_validate(cfg.providers.get(PROVIDER, {}))
        except ValidationError as exc:
            raise ValueError(f"tts.providers.{PROVIDER}: {exc}") from None
        opts = self.options
        self.voice_id = opts.voice_id or (cfg.voice if _VOICE_ID.match(cfg.voice) else "")
        fmt = opts.output_format
        self.sample_rate = 8000 if fmt in ("ulaw_8000", "alaw_8000") else int(fmt.split("_")[1])
        self.base_url = opts.base_url.rstrip("/")
        self.ws_url = (opts.ws_url or re.sub(r"^http", "ws", self.base_url)).rstrip("/")
        self._key = robot.secret(KEY_NAME) or ""
        register_secret(self._key)
        self.proxy = opts.proxy or robot.secret(PROXY_ENV) or None
        if self.proxy:
            self._register_proxy_secrets(self.proxy)
        self.usage = TtsUsage()
        self._ws_logger = _SecretMaskingLogger(logging.getLogger("websockets.client"), {})
        timeout = httpx.Timeout(opts.stall_timeout_s, connect=opts.connect_timeout_s)
        # without a proxy option both libraries follow the system proxy variables (HTTPS_PROXY …)
        self._client = client or httpx.AsyncClient(timeout=timeout, proxy=self.proxy)

    def _register_proxy_secrets(self, proxy: str) -> None:
        parts = urlsplit(proxy)
        if parts.scheme not in ("socks5", "socks5h", "http", "https"):
            raise ValueError(f"tts.providers.{PROVIDER}.proxy: unsupported scheme {parts.scheme!r}")
        ws_socks = parts.scheme.startswith("socks") and self.options.transport == "ws"
        if ws_socks and importlib.util.find_spec("python_socks") is None:
            raise ValueError("a SOCKS proxy for the WebSocket transport needs python-socks installed")
        register_secret(parts.password)
        if parts.password:
            register_secret(proxy)

    def _clean(self, text: str) -> str:
        text = text.replace(self._key, "***") if len(self._key) >= 4 else text
        return mask_secrets(text)[:MAX_ERROR_TEXT]

    def resolve_voice(self, voice: str) -> str:
        """The call's voice when it is an ElevenLabs voice id, else the robot's configured one."""
        voice = voice.strip()
        return voice if _VOICE_ID.match(voice) else self.voice_id

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        text = " ".join(text.split())
        if not text:
            return
        if not self._key:
            raise ProviderError(PROVIDER, f"{KEY_NAME} is not set", retryable=False)
        voice_id = self.resolve_voice(voice)
        if not voice_id:
            raise ProviderError(PROVIDER, "no voice_id configured", retryable=False)
        self.usage.requests += 1
        self.usage.characters += len(text)
        if self.options.transport == "ws":
            stream = self._stream_ws(text, voice_id)
        else:
            stream = self._stream_http(text, voice_id)
        total = 0
        # aclosing: closing this iterator closes the inner one now, not when it is garbage-collected
        async with contextlib.aclosing(stream):
            async for pcm in stream:
                total += len(pcm)
                yield pcm
        log.debug("tts.elevenlabs.done", characters=len(text), pcm_bytes=total, voice_id=voice_id)

    # ---- HTTP -------------------------------------------------------------------------------------
    async def _stream_http(self, text: str, voice_id: str) -> AsyncGenerator[bytes, None]:
        opts = self.options
        url = f"{self.base_url}/v1/text-to-speech/{voice_id}/stream"
        params: dict[str, str | int] = {"output_format": opts.output_format}
        if opts.optimize_streaming_latency is not None:
            params["optimize_streaming_latency"] = opts.optimize_streaming_latency
        body: dict[str, Any] = {"text": text, "model_id": opts.model_id}
        if opts.language_code:
            body["language_code"] = opts.language_code
        if opts.voice_settings is not None:
            body["voice_settings"] = opts.voice_settings.model_dump(exclude_none=True)
        headers = {"xi-api-key": self._key, "Accept": "*/*"}
        decoder = _AudioDecoder(opts.output_format)
        answered = False
        try:
            async with self._client.stream("POST", url, params=params, json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    raw = await resp.aread()
                    raise error_from_status(PROVIDER, resp.status_code, self._error_text(raw))
                ctype = resp.headers.get("content-type", "")
                # the content type of PCM/μ-law streams is [U]: reject only bodies that are clearly
                # not audio (a JSON or text answer with 200)
                if ctype.startswith(("application/json", "text/")):
                    raise ProviderProtocolError(PROVIDER, f"expected audio, got {ctype.split(';')[0]}")
                self._count_billed(resp.headers)
                answered = True
                async for block in resp.aiter_bytes():
                    pcm = decoder.feed(block)
                    if pcm:
                        yield pcm
                decoder.finish()
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(PROVIDER, type(exc).__name__) from None
        except httpx.RemoteProtocolError as exc:
            if answered:
                raise ProviderProtocolError(PROVIDER, "audio stream truncated") from None
            # e.g. a SOCKS proxy that could not reach the API hangs up before any answer
            raise ProviderConnectionError(PROVIDER, type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise ProviderConnectionError(PROVIDER, type(exc).__name__) from None

    def _count_billed(self, headers: httpx.Headers) -> None:
        raw = headers.get("character-cost") or headers.get("x-character-count") or ""
        if raw.strip().isdigit():
            self.usage.billed_characters += int(raw)

    def _error_text(self, raw: bytes) -> str:
        """``{"detail": {"status", "message"}}``, a 422 ``{"detail": [{"msg", …}]}`` or plain text."""
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._clean(raw.decode("utf-8", "replace"))
        detail = obj.get("detail") if isinstance(obj, dict) else None
        if isinstance(detail, dict):
            code, message = detail.get("status") or detail.get("code") or "", detail.get("message") or ""
            return self._clean(f"{code}: {message}" if code and message else str(code or message))
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return self._clean(str(detail[0].get("msg") or detail[0]))
        return self._clean(str(detail if detail is not None else obj))

    # ---- WebSocket --------------------------------------------------------------------------------
    def _ws_endpoint(self, voice_id: str) -> str:
        query = {"model_id": self.options.model_id, "output_format": self.options.output_format}
        if self.options.language_code:
            query["language_code"] = self.options.language_code
        return f"{self.ws_url}/v1/text-to-speech/{voice_id}/stream-input?{urlencode(query)}"

    def _ws_open_message(self) -> dict[str, Any]:
        opts = self.options
        # the key travels in the handshake header (preferred: docs/protocols/elevenlabs.md), not in a message
        message: dict[str, Any] = {"text": " "}
        if opts.voice_settings is not None:
            message["voice_settings"] = opts.voice_settings.model_dump(exclude_none=True)
        if opts.chunk_length_schedule is not None:
            message["generation_config"] = {"chunk_length_schedule": opts.chunk_length_schedule}
        return message

    async def _stream_ws(self, text: str, voice_id: str) -> AsyncGenerator[bytes, None]:
        opts = self.options
        decoder = _AudioDecoder(opts.output_format)
        got_audio = False
        try:
            async with ws_connect(
                self._ws_endpoint(voice_id),
                additional_headers={"xi-api-key": self._key},
                proxy=self.proxy or True,
                open_timeout=opts.connect_timeout_s,
                close_timeout=1.0,
                max_size=4 * 2**20,
                logger=self._ws_logger,
            ) as ws:
                # a server that refuses us may close while we send: the reason (an error frame
                # already queued, or the close itself) is then read by the loop below
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(self._ws_open_message()))
                    # each text chunk ends with a space; flush makes it speak now instead of buffering
                    await ws.send(json.dumps({"text": text + " ", "flush": True}, ensure_ascii=False))
                    await ws.send(json.dumps({"text": ""}))
                while True:
                    try:
                        async with asyncio.timeout(opts.stall_timeout_s):
                            raw = await ws.recv()
                    except ConnectionClosedOK:
                        # the SDK ends on a normal close too; without any audio it is a broken answer
                        if not got_audio:
                            raise ProviderProtocolError(PROVIDER, "socket closed before any audio") from None
                        # tolerated like the truncation it is: a dangling half sample is dropped
                        log.warning("tts.elevenlabs.closed_without_final", dropped_bytes=decoder.pending)
                        return
                    message = self._ws_message(raw)
                    pcm = decoder.feed(self._ws_audio(message))
                    if pcm:
                        got_audio = True
                        yield pcm
                    if message.get("isFinal") is True:
                        break
                decoder.finish()
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise error_from_status(
                PROVIDER, status, self._error_text(bytes(exc.response.body or b""))
            ) from None
        except ConnectionClosedError as exc:
            # close codes and reasons are [U]: a reason naming a vendor error code maps like a frame
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            if reason:
                raise self._ws_error({"message": f"{reason} (close code {code})"}) from None
            raise ProviderConnectionError(PROVIDER, f"websocket closed with code {code}") from None
        except TimeoutError:
            raise ProviderTimeoutError(PROVIDER) from None
        except (OSError, WebSocketException) as exc:
            raise ProviderConnectionError(PROVIDER, type(exc).__name__) from None

    def _ws_message(self, raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, bytes):
            raise ProviderProtocolError(PROVIDER, "unexpected binary frame")
        try:
            message = json.loads(raw)
        except json.JSONDecodeError:
            raise ProviderProtocolError(PROVIDER, "malformed JSON message") from None
        if not isinstance(message, dict):
            raise ProviderProtocolError(PROVIDER, "message is not an object")
        # error frames are [U]: the SDK treats an object with "message" (and no audio) as an error
        is_error = bool(message.get("message") or message.get("error"))
        if is_error and not message.get("audio") and message.get("isFinal") is not True:
            raise self._ws_error(message)
        return message

    def _ws_audio(self, message: dict[str, Any]) -> bytes:
        audio = message.get("audio")
        if audio is None or audio == "":
            return b""
        if not isinstance(audio, str):
            raise ProviderProtocolError(PROVIDER, "audio is not a base64 string")
        try:
            return base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderProtocolError(PROVIDER, "audio is not valid base64") from None

    def _ws_error(self, message: dict[str, Any]) -> ProviderError:
        code = str(message.get("error") or message.get("status") or "")
        text = self._clean(" ".join(p for p in (code, str(message.get("message") or "")) if p))
        haystack = text.lower()
        for vendor_code, status in _STATUS_BY_CODE.items():
            if vendor_code in haystack:
                return error_from_status(PROVIDER, status, text)
        numeric = message.get("code")
        if isinstance(numeric, int) and 400 <= numeric < 600:
            return error_from_status(PROVIDER, numeric, text)
        return ProviderProtocolError(PROVIDER, f"error message: {text}")

    async def aclose(self) -> None:
        await self._client.aclose()
