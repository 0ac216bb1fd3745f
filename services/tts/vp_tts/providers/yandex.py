"""``yandex`` TTS: Yandex SpeechKit, API v3 ``utteranceSynthesis`` (REST) or API v1 ``tts:synthesize``.

- v3 (default): ``POST {base_url}/tts/v3/utteranceSynthesis`` with a JSON body asking for raw
  ``LINEAR16_PCM`` at ``sample_rate``; the answer is newline-delimited JSON, one
  ``{"result": {"audioChunk": {"data": "<base64>"}}}`` per line (not SSE). Each chunk is yielded as it
  arrives. v3 takes any rate from 8 to 48 kHz.
- v1: ``POST {base_url}/speech/v1/tts:synthesize``, form-encoded, ``format=lpcm``; the body is the raw
  headerless PCM, streamed chunked. v1 takes 8000, 16000 or 48000 Hz only.

Auth: ``Authorization: Api-Key $YANDEX_API_KEY`` or, without a key, ``Bearer $YANDEX_IAM_TOKEN``.
Output: 16-bit mono little-endian PCM at ``self.sample_rate``. If a WAV header ever leads the audio
(the v3 default when no raw format is asked for) it is checked and stripped.

Timeouts: ``read_timeout_s`` is the longest silence between two pieces of the answer (a stall);
``total_timeout_s`` caps the time spent waiting on Yandex for one sentence (a slow trickle).
Closing the iterator leaves the ``async with`` around the response, which drops the connection at
once. No retries here. ``usage`` holds running totals for cost (see ``TtsUsage``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import re
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Self

import httpx
import structlog
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from voiceplatform.config import RobotConfig
from voiceplatform.logging import mask_secrets, register_secret
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
    error_from_status,
)
from voiceplatform.providers.base import ProviderBase, ProviderContext

PROVIDER = "yandex"
DEFAULT_BASE_URL = "https://tts.api.cloud.yandex.net"
V3_PATH = "/tts/v3/utteranceSynthesis"
V1_PATH = "/speech/v1/tts:synthesize"
V1_SAMPLE_RATES = (8000, 16000, 48000)
MAX_TEXT_CHARS = 5000  # REST limit of both APIs
DEFAULT_VOICE = "alena"
_YANDEX_VOICE = re.compile(r"[a-z]{2,20}(_[a-z]{2})?")
MAX_ERROR_TEXT = 200
MAX_ERROR_BODY = 16 * 1024
# gRPC code → HTTP status (SpeechKit docs table), for errors that carry only ``grpcCode``
_GRPC_TO_HTTP = {3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 12: 501, 13: 500, 14: 503, 16: 401}

log = structlog.get_logger("vp_tts.yandex")


class YandexTtsOptions(BaseModel):
    """``robot.settings.tts.providers["yandex"]``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api: Literal["v3", "v1"] = "v3"
    base_url: str = DEFAULT_BASE_URL
    # sent as x-folder-id (v3) / folderId (v1 with an IAM token); env YANDEX_FOLDER_ID if empty
    folder_id: str = ""
    voice: str = ""
    # v3 hint "role", v1 "emotion" (good, evil, neutral, friendly, ...)
    role: str = Field(default="", validation_alias=AliasChoices("role", "emotion"))
    speed: float | None = Field(default=None, ge=0.1, le=3.0)
    # None: the robot's tts.sample_rate (v1: the nearest rate it offers at or above it)
    sample_rate: int | None = Field(default=None, ge=8000, le=48000)
    lang: str = "ru-RU"  # v1 only; v3 picks the language from the voice
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    total_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _v1_rates(self) -> YandexTtsOptions:
        if self.api == "v1" and self.sample_rate is not None and self.sample_rate not in V1_SAMPLE_RATES:
            raise ValueError(f"api v1 offers sample_rate {V1_SAMPLE_RATES} only")
        return self


@dataclass
class TtsUsage:
    """Running totals of one provider instance (all calls); read deltas around a call for its cost.

    ``characters`` counts the text of every request Yandex accepted (HTTP 200): that is what is
    billed, even when the caller interrupts the audio.
    """

    requests: int = 0
    characters: int = 0
    audio_seconds: float = 0.0


def _options(robot: RobotConfig) -> YandexTtsOptions:
    try:
        return YandexTtsOptions.model_validate(robot.settings.tts.providers.get(PROVIDER, {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise ProviderError(
            PROVIDER, f"bad tts.providers.yandex options: {problems}", retryable=False
        ) from None


def _int_or_zero(value: Any) -> int:
    # proto-JSON may send numbers as strings
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def _looks_like_yandex_voice(voice: str) -> bool:
    # Yandex voice ids are one lower-case latin word, maybe with a language suffix (alena, madi_ru);
    # Festival (voice_msu_ru_nsh_clunits), espeak (ru+f3) and Zvukogram (Алена) names are not
    return _YANDEX_VOICE.fullmatch(voice) is not None


class YandexTts(ProviderBase):
    name = PROVIDER
    # built per robot (its keys and options): TtsService.provider(name, robot)

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    def __init__(self, robot: RobotConfig, *, client: httpx.AsyncClient | None = None) -> None:
        self.options = opts = _options(robot)
        cfg = robot.settings.tts
        self.sample_rate = opts.sample_rate or cfg.sample_rate
        if opts.api == "v1" and self.sample_rate not in V1_SAMPLE_RATES:
            self.sample_rate = min((r for r in V1_SAMPLE_RATES if r >= self.sample_rate), default=48000)
        robot_voice = cfg.voice.strip()
        self.default_voice = opts.voice or (robot_voice if _looks_like_yandex_voice(robot_voice) else "")
        self.default_voice = self.default_voice or DEFAULT_VOICE
        self.base_url = opts.base_url.rstrip("/")
        self.folder_id = opts.folder_id or robot.secret("YANDEX_FOLDER_ID") or ""
        api_key, iam_token = robot.secret("YANDEX_API_KEY"), robot.secret("YANDEX_IAM_TOKEN")
        if not api_key and not iam_token:
            raise ProviderError(PROVIDER, "no YANDEX_API_KEY or YANDEX_IAM_TOKEN in env", retryable=False)
        self._secret = api_key or iam_token or ""
        register_secret(self._secret)
        self._iam = not api_key
        self._authorization = f"Bearer {iam_token}" if self._iam else f"Api-Key {api_key}"
        self._timeout = httpx.Timeout(
            connect=opts.connect_timeout_s, read=opts.read_timeout_s, write=opts.read_timeout_s, pool=5.0
        )
        self._client = client or httpx.AsyncClient(timeout=self._timeout)
        self.usage = TtsUsage()

    def resolve_voice(self, voice: str) -> str:
        """The provider's own ``voice`` option wins; else the call's voice if it is a Yandex one."""
        voice = voice.strip()
        if self.options.voice or not _looks_like_yandex_voice(voice):
            return self.default_voice
        return voice

    # ---- requests -----------------------------------------------------------------------------
    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"Authorization": self._authorization, "x-client-request-id": request_id}
        if self.folder_id and self.options.api == "v3":
            headers["x-folder-id"] = self.folder_id  # the v3 docs say: on every request
        return headers

    def _v3_body(self, text: str, voice: str) -> dict[str, Any]:
        hints: list[dict[str, Any]] = [{"voice": voice}]  # one oneof member per list element
        if self.options.role:
            hints.append({"role": self.options.role})
        if self.options.speed is not None:
            hints.append({"speed": self.options.speed})
        return {
            "text": text,
            "hints": hints,
            # int64 goes as a string in proto-JSON; without rawAudio the answer is WAV at 22050 Hz
            "outputAudioSpec": {
                "rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": str(self.sample_rate)}
            },
        }

    def _v1_form(self, text: str, voice: str) -> dict[str, str]:
        form = {
            "text": text,
            "lang": self.options.lang,
            "voice": voice,
            "format": "lpcm",
            "sampleRateHertz": str(self.sample_rate),
        }
        if self.options.role:
            form["emotion"] = self.options.role
        if self.options.speed is not None:
            form["speed"] = f"{self.options.speed:g}"
        if self.folder_id and self._iam:
            form["folderId"] = self.folder_id  # only for user accounts; a service account has a folder
        return form

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        text = " ".join(text.split())
        if not text:
            return
        if len(text) > MAX_TEXT_CHARS:
            raise ProviderError(PROVIDER, f"text longer than {MAX_TEXT_CHARS} characters", retryable=False)
        voice = self.resolve_voice(voice)
        request_id = str(uuid.uuid4())
        v3 = self.options.api == "v3"
        request: dict[str, Any] = (
            {"url": self.base_url + V3_PATH, "json": self._v3_body(text, voice)}
            if v3
            else {"url": self.base_url + V1_PATH, "data": self._v1_form(text, voice)}
        )
        budget = _Budget(self.options.total_timeout_s)
        assembler = PcmAssembler(PROVIDER, self.sample_rate)
        started = time.monotonic()
        try:
            async with self._client.stream(
                "POST", headers=self._headers(request_id), timeout=self._timeout, **request
            ) as response:
                if response.status_code != 200:
                    raise await self._status_error(response, request_id)
                self.usage.requests += 1
                self.usage.characters += len(text)
                reader: AsyncIterator[Any] = response.aiter_lines() if v3 else response.aiter_bytes()
                async with contextlib.aclosing(reader):  # type: ignore[type-var]
                    while (piece := await budget.next(reader)) is not None:
                        pcm = assembler.feed(self._v3_line_audio(piece) if v3 else piece)
                        if pcm:
                            yield pcm
                tail = assembler.finish()
                if tail:
                    yield tail
                if not assembler.total_bytes:
                    raise ProviderProtocolError(PROVIDER, "answer without audio")
        except httpx.RemoteProtocolError:
            raise ProviderProtocolError(PROVIDER, "stream truncated (connection closed mid-answer)") from None
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(PROVIDER, f"stalled: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ProviderConnectionError(PROVIDER, type(exc).__name__) from None
        finally:
            self.usage.audio_seconds += assembler.total_bytes / 2 / self.sample_rate
        log.info(
            "tts.yandex_synthesized",
            api=self.options.api,
            voice=voice,
            request_id=request_id,
            characters=len(text),
            audio_ms=round(assembler.total_bytes / 2 / self.sample_rate * 1000),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    def _v3_line_audio(self, line: str) -> bytes:
        if not line.strip():
            return b""
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ProviderProtocolError(PROVIDER, "malformed JSON line in stream") from None
        if not isinstance(obj, dict):
            raise ProviderProtocolError(PROVIDER, "stream line is not an object")
        if "error" in obj:  # the gateway reports an error that came after the 200 this way
            raise self._error_from_body(obj, 0, "")
        # gRPC-gateway wraps each streamed message in "result"; accept a bare message too [U]
        result = obj.get("result", obj)
        if not isinstance(result, dict):
            raise ProviderProtocolError(PROVIDER, "stream line without a result object")
        chunk = result.get("audioChunk")
        if chunk is None:
            return b""  # text chunks / timings only
        data = chunk.get("data") if isinstance(chunk, dict) else None
        if not isinstance(data, str):
            raise ProviderProtocolError(PROVIDER, "audioChunk without base64 data")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderProtocolError(PROVIDER, "audioChunk data is not valid base64") from None

    # ---- errors -------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        if len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return mask_secrets(" ".join(text.split()))[:MAX_ERROR_TEXT]

    async def _status_error(self, response: httpx.Response, request_id: str) -> ProviderError:
        raw = b""
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) >= MAX_ERROR_BODY:
                break
        try:
            body: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = raw.decode("utf-8", "replace")
        retry_after = response.headers.get("retry-after", "")
        error = self._error_from_body(body, response.status_code, retry_after)
        log.warning(
            "tts.yandex_rejected",
            status=response.status_code,
            request_id=request_id,
            yandex_request_id=response.headers.get("x-request-id", ""),
            error=str(error),
        )
        return error

    def _error_from_body(self, body: Any, status: int, retry_after: str) -> ProviderStatusError:
        """v3 ``{"error": {"grpcCode", "httpCode", "message"}}`` or v1 ``{"error_code", "error_message"}``."""
        message = ""
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                message = str(err.get("message") or err.get("httpStatus") or "")
                if not status:
                    grpc_status = _GRPC_TO_HTTP.get(_int_or_zero(err.get("grpcCode")), 500)
                    status = _int_or_zero(err.get("httpCode")) or grpc_status
            else:
                code, text = body.get("error_code", ""), body.get("error_message", "")
                message = f"{code}: {text}" if code and text else str(code or text or err or "")
        elif isinstance(body, str):
            message = body
        if retry_after:
            message = f"{message} (retry after {retry_after[:20]} s)".strip()
        return error_from_status(PROVIDER, status or 500, self._clean(message))

    async def aclose(self) -> None:
        await self._client.aclose()


class _Budget:
    """Total time spent waiting on the vendor for one answer (not counting the consumer's time)."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    async def next(self, source: AsyncIterator[Any]) -> Any:
        """The next piece of ``source``, or None at its end."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(self.left, 0.0)):
                return await anext(source)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise ProviderTimeoutError(PROVIDER, "answer too slow (total timeout)") from None
        finally:
            self.left -= time.monotonic() - started


class PcmAssembler:
    """Whole 16-bit samples out of arbitrary pieces; a leading WAV header is checked and stripped.

    Pieces may split a sample (a byte is carried to the next piece); an odd byte left at the end
    means the audio is not 16-bit PCM. Raw PCM cannot start with ``RIFF....WAVE`` by accident in
    practice, so that prefix is taken as a container. Whether Yandex repeats the header in later
    chunks of a WAV stream is not known [U]; we ask for raw audio, so only a leading one is handled.
    """

    MAX_HEADER = 64 * 1024

    def __init__(self, provider: str, sample_rate: int) -> None:
        self.provider = provider
        self.sample_rate = sample_rate
        self.total_bytes = 0
        self._head: bytearray | None = bytearray()  # None once the start of the audio is settled
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        if self._head is not None:
            self._head += data
            if len(self._head) < 12 and self._head[:4] == b"RIFF"[: len(self._head)]:
                return b""  # may still become a WAV header: wait for more
            data = self._strip_header(self._head)
            if self._head is not None:
                return b""  # header not complete yet
        data = self._carry + data
        cut = len(data) - len(data) % 2
        self._carry = data[cut:]
        self.total_bytes += cut
        return data[:cut]

    def finish(self) -> bytes:
        pcm = b""
        if self._head is not None:
            if self._head[:4] == b"RIFF":
                raise ProviderProtocolError(self.provider, "WAV header without a data chunk")
            head, self._head = bytes(self._head), None
            pcm = self.feed(head)
        if self._carry:
            raise ProviderProtocolError(self.provider, "odd number of audio bytes (not 16-bit PCM)")
        return pcm

    def _strip_header(self, head: bytearray) -> bytes:
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            self._head = None
            return bytes(head)
        pos = 12
        while pos + 8 <= len(head):
            chunk_id, size = struct.unpack_from("<4sI", head, pos)
            if chunk_id == b"data":  # its size may be a streaming placeholder: read to the end
                self._head = None
                return bytes(head[pos + 8 :])
            if chunk_id == b"fmt " and pos + 24 <= len(head):
                fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
                if fmt not in (1, 0xFFFE) or channels != 1 or bits != 16:
                    raise ProviderProtocolError(self.provider, "WAV audio is not 16-bit mono PCM")
                if rate != self.sample_rate:
                    raise ProviderProtocolError(self.provider, f"WAV at {rate} Hz, asked {self.sample_rate}")
            pos += 8 + size + (size & 1)
        if len(head) > self.MAX_HEADER:
            raise ProviderProtocolError(self.provider, "WAV header too long")
        return b""
