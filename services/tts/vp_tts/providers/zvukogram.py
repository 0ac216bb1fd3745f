"""``zvukogram`` TTS: the zvukogram.com API, ``token`` + ``email`` sent as form fields of every call.

- Text up to ``short_text_limit`` (300 characters, the official README; a third-party reference
  says 1000 [U]) → ``api/text``: synchronous, the answer carries the audio file URL.
- Longer text → ``api/longtext``: a job (``id``, ``status`` 0). ``api/result`` is polled every
  ``poll_interval_s`` until ``status`` 1 (``file``) or an error, for at most ``job_timeout_s``. An
  ``api/text`` answer with ``status`` 0 and an ``id`` is polled the same way (tolerance).
- Calls are ``POST {base_url}?r=api/<method>``, form-encoded. The credentials travel in the body,
  never in a URL, and are masked in every error text. The file is then fetched with a plain GET.

Audio: we ask for ``format=wav`` (only mp3 is in the official samples; wav is reported by third
parties [T]) and decode it with ``wave``. If an MP3 comes back anyway (or ``format: mp3`` is set)
it is decoded with PyAV, which faster-whisper already installs. ``self.sample_rate`` is fixed when
the provider is built, because the service sets up its resampler from it before the first chunk:
we ask for that rate (``sample_rate``, [T]) and a file at any other rate is resampled to it here,
with a warning, so every chunk we yield is 16-bit mono PCM at ``self.sample_rate``.

Errors: HTTP statuses go through ``error_from_status``. The API's own errors (HTTP 200 with
``status`` not 0/1 and an ``error`` text; their codes are undocumented [U]) are a non-retryable
``ProviderError`` when a request is refused (bad token, balance, voice), retryable when an accepted
job fails later. Cancelling the task aborts whichever HTTP call is in flight and stops polling.
"""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voiceplatform.audio import resample_pcm
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

PROVIDER = "zvukogram"
DEFAULT_BASE_URL = "https://zvukogram.com/index.php"
DEFAULT_VOICE = "Алена"
TOKEN_ENV, EMAIL_ENV = "TTS_TOKEN", "TTS_EMAIL"
MAX_ERROR_TEXT = 200
_WAV_SIZE_PLACEHOLDER = 0x7FFFFFFF  # data sizes at or above this are "until the end" in streamed WAVs

log = structlog.get_logger("vp_tts.zvukogram")


class ZvukogramOptions(BaseModel):
    """``robot.settings.tts.providers["zvukogram"]``."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    voice: str = ""  # a Zvukogram voice *name* (often Cyrillic: Алена, Владимир, Филипп)
    format: Literal["wav", "mp3"] = "wav"
    sample_rate: int | None = Field(default=None, ge=8000, le=48000)  # None: the robot's tts.sample_rate
    speed: float | None = Field(default=None, ge=0.1, le=2.0)
    pitch: int | None = Field(default=None, ge=-20, le=20)
    emotion: str = ""
    short_text_limit: int = Field(default=300, ge=1, le=5000)
    poll_interval_s: float = Field(default=1.0, gt=0)
    job_timeout_s: float = Field(default=120.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)  # connect/read of each HTTP call
    download_timeout_s: float = Field(default=30.0, gt=0)  # the whole file, slow trickle included
    max_audio_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)


@dataclass
class TtsUsage:
    """Running totals of one provider instance (all calls); read deltas around a call for its cost.

    ``characters`` counts the text of every request the API accepted; ``cost`` sums the ``cost`` the
    API reports (its currency), ``balance`` is the last ``balans`` seen.
    """

    requests: int = 0
    characters: int = 0
    audio_seconds: float = 0.0
    cost: float = 0.0
    balance: float | None = None


def _options(robot: RobotConfig) -> ZvukogramOptions:
    try:
        return ZvukogramOptions.model_validate(robot.settings.tts.providers.get(PROVIDER, {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise ProviderError(
            PROVIDER, f"bad tts.providers.zvukogram options: {problems}", retryable=False
        ) from None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _public_url(url: str) -> str:
    """For logs: scheme, host and path only (a query may carry a download key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class ZvukogramTts(ProviderBase):
    name = PROVIDER
    # built per robot (its keys and options): TtsService.provider(name, robot)

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    def __init__(self, robot: RobotConfig, *, client: httpx.AsyncClient | None = None) -> None:
        self.options = opts = _options(robot)
        self.sample_rate = opts.sample_rate or robot.settings.tts.sample_rate
        self.default_voice = opts.voice or robot.settings.tts.voice.strip() or DEFAULT_VOICE
        self.base_url = opts.base_url
        token, email = robot.secret(TOKEN_ENV), robot.secret(EMAIL_ENV)
        if not token or not email:
            raise ProviderError(PROVIDER, f"no {TOKEN_ENV} or {EMAIL_ENV} in env", retryable=False)
        self._token, self._email = token, email
        register_secret(token)
        register_secret(email)
        self._timeout = httpx.Timeout(opts.request_timeout_s)
        self._client = client or httpx.AsyncClient(timeout=self._timeout)
        self.usage = TtsUsage()

    def resolve_voice(self, voice: str) -> str:
        """The provider's own ``voice`` option wins over the robot-wide voice the call carries."""
        return self.options.voice or voice.strip() or self.default_voice

    def _fields(self, text: str, voice: str) -> dict[str, str]:
        o = self.options
        fields = {"voice": voice, "text": text, "format": o.format, "sample_rate": str(self.sample_rate)}
        if o.speed is not None:
            fields["speed"] = f"{o.speed:g}"
        if o.pitch is not None:
            fields["pitch"] = str(o.pitch)
        if o.emotion:
            fields["emotion"] = o.emotion
        return fields

    async def stream_synthesize(self, text: str, voice: str) -> AsyncGenerator[bytes, None]:
        text = " ".join(text.split())
        if not text:
            return
        voice = self.resolve_voice(voice)
        started = time.monotonic()
        method = "text" if len(text) <= self.options.short_text_limit else "longtext"
        try:
            answer = await self._api(method, self._fields(text, voice))
            self._count(answer, len(text))
            url = await self._file_url(answer)
            audio = await self._download(url)
        except httpx.RemoteProtocolError:
            raise ProviderProtocolError(PROVIDER, "answer truncated (connection closed early)") from None
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(PROVIDER, f"stalled: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ProviderConnectionError(PROVIDER, type(exc).__name__) from None
        pcm = await asyncio.to_thread(self._decode, audio)
        self.usage.audio_seconds += len(pcm) / 2 / self.sample_rate
        log.info(
            "tts.zvukogram_synthesized",
            method=method,
            voice=voice,
            file=_public_url(url),
            characters=len(text),
            audio_ms=round(len(pcm) / 2 / self.sample_rate * 1000),
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )
        step = max(2, self.sample_rate // 10 * 2)  # 100 ms pieces: closing between them stops at once
        for start in range(0, len(pcm), step):
            yield pcm[start : start + step]

    # ---- API calls ----------------------------------------------------------------------------
    async def _api(self, method: str, fields: dict[str, str]) -> dict[str, Any]:
        response = await self._client.post(
            self.base_url,
            params={"r": f"api/{method}"},
            data={"token": self._token, "email": self._email, **fields},
            timeout=self._timeout,
        )
        if response.status_code != 200:
            message = self._clean(response.text)
            retry_after = response.headers.get("retry-after", "")
            if retry_after:
                message = f"{message} (retry after {retry_after[:20]} s)"
            log.warning("tts.zvukogram_rejected", method=method, status=response.status_code, error=message)
            raise error_from_status(PROVIDER, response.status_code, message)
        try:
            answer = response.json()
        except ValueError:
            raise ProviderProtocolError(PROVIDER, f"api/{method} answer is not JSON") from None
        if not isinstance(answer, dict):
            raise ProviderProtocolError(PROVIDER, f"api/{method} answer is not an object")
        return answer

    def _count(self, answer: dict[str, Any], characters: int) -> None:
        if self._status(answer) in (0, 1):  # accepted: billed
            self.usage.requests += 1
            self.usage.characters += characters

    def _note_billing(self, ready: dict[str, Any]) -> None:
        # the ready answer (of api/text or of the last api/result poll) carries cost and balance [T]
        self.usage.cost += _float_or_none(ready.get("cost")) or 0.0
        balance = _float_or_none(ready.get("balans"))
        self.usage.balance = balance if balance is not None else self.usage.balance

    @staticmethod
    def _status(answer: dict[str, Any]) -> int:
        raw = answer.get("status")  # a number or a string ("1")
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ProviderProtocolError(PROVIDER, "answer without a status")
        try:
            return int(raw)
        except ValueError:
            raise ProviderProtocolError(PROVIDER, "answer with a non-numeric status") from None

    async def _file_url(self, answer: dict[str, Any]) -> str:
        """Wait for the job (if any) and return the absolute URL of the audio file."""
        deadline = time.monotonic() + self.options.job_timeout_s
        polls = 0
        while True:
            status = self._status(answer)
            if status == 1:
                file = answer.get("file")
                if not isinstance(file, str) or not file:
                    raise ProviderProtocolError(PROVIDER, "ready answer without a file URL")
                self._note_billing(answer)
                return urljoin(self.base_url, file)
            if status != 0:
                message = self._clean(str(answer.get("error") or f"status {status}"))
                # a refused request does not get better on retry; an accepted job that failed may
                raise ProviderError(PROVIDER, f"api error: {message}", retryable=polls > 0)
            job_id = answer.get("id")
            if not isinstance(job_id, int | str) or not str(job_id):
                raise ProviderProtocolError(PROVIDER, "pending answer without a job id")
            if time.monotonic() + self.options.poll_interval_s > deadline:
                raise ProviderTimeoutError(PROVIDER, f"job not ready after {polls} polls")
            await asyncio.sleep(self.options.poll_interval_s)
            answer = await self._api("result", {"id": str(job_id)})
            polls += 1

    async def _download(self, url: str) -> bytes:
        body = bytearray()
        try:
            async with asyncio.timeout(self.options.download_timeout_s):
                async with self._client.stream("GET", url, timeout=self._timeout) as response:
                    if response.status_code != 200:
                        raise error_from_status(PROVIDER, response.status_code, "audio download failed")
                    async for piece in response.aiter_bytes():
                        body += piece
                        if len(body) > self.options.max_audio_bytes:
                            raise ProviderProtocolError(PROVIDER, "audio file too large")
        except TimeoutError:
            raise ProviderTimeoutError(PROVIDER, "audio download too slow") from None
        return bytes(body)

    # ---- audio --------------------------------------------------------------------------------
    def _decode(self, audio: bytes) -> bytes:
        if audio[:4] == b"RIFF":
            return self._decode_wav(audio)
        if audio[:3] == b"ID3" or (len(audio) > 1 and audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0):
            return self._decode_mp3(audio)
        raise ProviderProtocolError(PROVIDER, "audio file is neither WAV nor MP3")

    def _decode_wav(self, audio: bytes) -> bytes:
        try:
            with wave.open(io.BytesIO(audio), "rb") as wav:
                width, channels, rate, frames = (
                    wav.getsampwidth(),
                    wav.getnchannels(),
                    wav.getframerate(),
                    wav.getnframes(),
                )
                data = wav.readframes(frames)
        except (wave.Error, EOFError) as exc:
            raise ProviderProtocolError(PROVIDER, f"bad WAV file: {exc}"[:MAX_ERROR_TEXT]) from None
        if width != 2:
            raise ProviderProtocolError(PROVIDER, f"WAV is {8 * width}-bit, not 16-bit PCM")
        expected = frames * width * channels
        if expected < _WAV_SIZE_PLACEHOLDER and len(data) < expected:
            raise ProviderProtocolError(PROVIDER, "WAV file truncated")
        data = data[: len(data) - len(data) % (width * channels)]
        if not data:
            raise ProviderProtocolError(PROVIDER, "WAV file without audio")
        if channels > 1:
            samples = np.frombuffer(data, dtype="<i2").reshape(-1, channels).mean(axis=1)
            data = np.round(samples).astype("<i2").tobytes()
        if rate != self.sample_rate:
            log.warning("tts.zvukogram_resampled", file_rate=rate, sample_rate=self.sample_rate)
            data = resample_pcm(data, rate, self.sample_rate)
        return data

    def _decode_mp3(self, audio: bytes) -> bytes:
        try:
            import av  # PyAV comes with faster-whisper; imported only when an MP3 arrives
        except ImportError:
            raise ProviderProtocolError(PROVIDER, "got MP3 but PyAV (av) is not installed") from None
        out = bytearray()
        try:
            with av.open(io.BytesIO(audio), mode="r", format="mp3") as container:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
                for frame in container.decode(audio=0):
                    for converted in resampler.resample(frame):
                        out += converted.to_ndarray().tobytes()
                for converted in resampler.resample(None):
                    out += converted.to_ndarray().tobytes()
        except (av.FFmpegError, ValueError) as exc:
            raise ProviderProtocolError(PROVIDER, f"bad MP3 file: {type(exc).__name__}") from None
        if not out:
            raise ProviderProtocolError(PROVIDER, "MP3 file without audio")
        return bytes(out)

    def _clean(self, text: str) -> str:
        for secret in (self._token, self._email):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return mask_secrets(" ".join(text.split()))[:MAX_ERROR_TEXT]

    async def aclose(self) -> None:
        await self._client.aclose()
