"""``yandex`` ASR provider: SpeechKit STT v3 streaming recognition (docs/protocols/yandex-speechkit.md).

One bidirectional ``speechkit.stt.v3.Recognizer/RecognizeStreaming`` call per ``stream_recognize``:
``session_options`` (raw LPCM, 8/16 kHz mono) first, then the audio in ≤ 200 ms messages, then a
half-close; the service answers ``partial`` / ``final`` / ``final_refinement`` / ``eou_update`` /
``status_code`` and closes the stream. Mapping:

- ``partial`` with text → ``Transcript(is_final=False)``.
- ``final`` is the fixed text of a piece of speech. With text normalization on (the default) it is
  yielded as a partial at once and held until its ``final_refinement`` (matched by ``final_index``),
  whose normalized text becomes the ``Transcript(is_final=True)``; without normalization the final
  itself is. ``eou_update`` ends the utterance: any final still without a refinement is released
  as it is (tolerant: the final → refinement → eou order is [C] only from one docs example).
- Other events (classifier/speaker analysis, summarization, ones added later) are ignored, as are
  responses for a channel other than "0" (we send mono).

Closing the iterator or cancelling the task cancels the gRPC call at once (barge-in). gRPC statuses
map to the shared error tree through SpeechKit's gRPC↔HTTP status table; gRPC-level retries are off.
A watchdog raises ``ProviderTimeoutError`` when no result comes within ``first_result_timeout_s`` of
the first audio, or the service goes quiet for ``finish_timeout_s`` after our half-close.

Usage: ``last_usage`` is the ``AsrUsage`` of the stream started last (audio seconds sent, and what
the service's ``audio_cursors`` said it received); ``total_audio_s`` sums every stream's audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import grpc
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yandex.cloud.ai.stt.v3 import stt_pb2, stt_service_pb2_grpc

from voiceplatform.config import RobotConfig
from voiceplatform.logging import mask_secrets, register_secret
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeoutError,
    Transcript,
    error_from_status,
)
from voiceplatform.providers.base import ProviderBase, ProviderContext

log = structlog.get_logger("vp_asr.yandex")

DEFAULT_ENDPOINT = "stt.api.cloud.yandex.net:443"
API_KEY_NAME = "YANDEX_API_KEY"
IAM_TOKEN_NAME = "YANDEX_IAM_TOKEN"
MAX_ERROR_TEXT = 200
# big segments are split: the service wants audio in small, regular messages (its session rules)
CHUNK_MS = 200
# our one retry layer lives above the providers: no transparent gRPC retries underneath it
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.enable_retries", 0),)

# gRPC status → the HTTP status the SpeechKit docs pair it with (status table), so error_from_status decides
# retryability the same way for every provider (401/403/400 no; 429/5xx yes).
_HTTP_OF_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# bare codes → the BCP-47 tags SpeechKit's language_restriction takes
_LANGUAGE_TAGS = {"ru": "ru-RU", "en": "en-US", "kk": "kk-KZ", "uz": "uz-UZ", "tr": "tr-TR", "de": "de-DE"}

ChannelFactory = Callable[[str, Sequence[tuple[str, Any]]], grpc.aio.Channel]


class YandexAsrOptions(BaseModel):
    """``asr.providers.yandex`` in the robot config."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = DEFAULT_ENDPOINT
    tls: bool = True
    model: str = "general"
    folder_id: str = ""
    auth: Literal["api_key", "iam"] | None = None  # None: the API key when set, else the IAM token
    eou_sensitivity: Literal["default", "high"] = "default"
    max_pause_between_words_hint_ms: int = Field(default=0, ge=0, le=5000)  # 0: the service default
    text_normalization: bool = True
    profanity_filter: bool = False
    data_logging: bool = False  # x-data-logging-enabled: calls carry personal data, keep it off
    first_result_timeout_s: float = Field(default=10.0, ge=0)  # 0 disables the guard
    finish_timeout_s: float = Field(default=10.0, gt=0)


@dataclass(slots=True)
class AsrUsage:
    sample_rate: int = 0
    bytes_sent: int = 0
    server_received_ms: int = 0  # the largest audio_cursors.received_data_ms the service reported

    @property
    def audio_s(self) -> float:
        return self.bytes_sent / (2 * self.sample_rate) if self.sample_rate else 0.0


def yandex_language(language: str) -> str:
    """``ru`` → ``ru-RU``; ``""`` or ``auto`` → no restriction (the service detects the language)."""
    language = language.strip().replace("_", "-")
    if not language or language.lower() == "auto":
        return ""
    return _LANGUAGE_TAGS.get(language.lower(), language)


def _default_channel(tls: bool) -> ChannelFactory:
    def make(endpoint: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        if tls:
            return grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(), options=options)
        return grpc.aio.insecure_channel(endpoint, options=options)

    return make


class _Watchdog:
    """Deadlines for the service's answers; cancels the call (and says why) when one passes."""

    def __init__(self, first_result_s: float, finish_s: float) -> None:
        self.first_result_s = first_result_s
        self.finish_s = finish_s
        self.audio_started_at: float | None = None
        self.result_seen = False
        self.any_response = False
        self.input_done_at: float | None = None
        self.last_response_at = 0.0
        self.timed_out = ""
        self.input_error: BaseException | None = None
        self._changed = asyncio.Event()
        self._stopped = False

    def audio_sent(self) -> None:
        if self.audio_started_at is None:
            self.audio_started_at = time.monotonic()
            self._changed.set()

    def input_finished(self) -> None:
        self.input_done_at = time.monotonic()
        self._changed.set()

    def response(self, is_result: bool) -> None:
        self.any_response = True
        self.result_seen = self.result_seen or is_result
        self.last_response_at = time.monotonic()
        self._changed.set()

    def _deadline(self) -> tuple[float, str] | None:
        if self.input_done_at is not None:
            quiet_since = max(self.input_done_at, self.last_response_at)
            return quiet_since + self.finish_s, f"no answer for {self.finish_s:g}s after the audio ended"
        if self.audio_started_at is not None and not self.result_seen and self.first_result_s > 0:
            at = self.audio_started_at + self.first_result_s
            return at, f"no result within {self.first_result_s:g}s of the first audio"
        return None

    def stop(self) -> None:
        self._stopped = True
        self._changed.set()

    async def watch(self, call: grpc.aio.StreamStreamCall) -> None:
        # a stop flag as well as task.cancel(): wait_for in 3.11 can swallow a cancel that races
        # with the awaited event being set, and this loop would then outlive the stream
        while not self._stopped:
            self._changed.clear()
            due = self._deadline()
            if due is None:
                await self._changed.wait()
                continue
            remaining = due[0] - time.monotonic()
            if remaining <= 0:
                self.timed_out = due[1]
                call.cancel()
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()


class _FirstStatus:
    """The status the service ended the call with, read before grpc can overwrite it.

    grpc/grpc#36066 (grpcio 1.85): when a write fails because the service has just ended the call
    (an auth or quota rejection while audio is still going up), StreamStreamCall replaces the
    service's status with INTERNAL "Internal error from Core". The call's done callback runs with
    the real status before that failed write is handled, so it is read right there.
    """

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        call.add_done_callback(self._on_done)

    def _on_done(self, call: grpc.aio.StreamStreamCall) -> None:
        # code()/details() are coroutines that finish without suspending once the call is done
        code, details = _value_now(call.code()), _value_now(call.details())
        if isinstance(code, grpc.StatusCode):
            self.code, self.details = code, details if isinstance(details, str) else ""

    def of(self, exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
        """(code, details) of a failed call: the first status seen, else the exception's."""
        if self.code is not None:
            return self.code, self.details
        return exc.code(), exc.details() or ""


def _value_now(coro: Coroutine[Any, Any, object]) -> object:
    """The result of a coroutine that completes without waiting; None (and closed) if it would wait."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    return None


class _Results:
    """StreamingResponse events → transcripts (see the module docstring for the rules)."""

    def __init__(self, normalized: bool, language: str) -> None:
        self.normalized = normalized
        self.language = language
        self.pending: dict[int, Transcript] = {}  # finals waiting for their refinement, by final_index
        self.released: set[int] = set()

    def feed(self, response: stt_pb2.StreamingResponse) -> list[Transcript]:
        if response.channel_tag not in ("", "0"):
            return []
        event = response.WhichOneof("Event")
        if event == "partial":
            partial = self._transcript(response.partial, is_final=False)
            return [partial] if partial.text else []
        if event == "final":
            return self._final(response.final, response.audio_cursors.final_index)
        if event == "final_refinement" and response.final_refinement.HasField("normalized_text"):
            return self._refinement(response.final_refinement)
        if event == "eou_update":
            return self.flush()
        if event == "status_code" and response.status_code.code_type == stt_pb2.WARNING:
            log.warning("asr.yandex_status_warning", detail=mask_secrets(response.status_code.message))
        return []

    def flush(self) -> list[Transcript]:
        """Release held finals as they are (end of utterance or end of stream)."""
        out = [self.pending[index] for index in sorted(self.pending)]
        self.released.update(self.pending)
        self.pending.clear()
        return out

    def _final(self, update: stt_pb2.AlternativeUpdate, index: int) -> list[Transcript]:
        final = self._transcript(update, is_final=True)
        if not final.text:
            self.released.add(index)
            return []
        if not self.normalized:
            return [final]
        self.pending[index] = final
        return [Transcript(final.text, is_final=False, language=final.language)]

    def _refinement(self, refinement: stt_pb2.FinalRefinement) -> list[Transcript]:
        index = refinement.final_index
        raw = self.pending.pop(index, None)
        if raw is None and index in self.released:
            return []  # its final already went out unrefined
        if raw is None and self.pending:  # [U] an index we do not know: refine the oldest held final
            oldest = min(self.pending)
            raw = self.pending.pop(oldest)
            self.released.add(oldest)
        self.released.add(index)
        final = self._transcript(refinement.normalized_text, is_final=True)
        if final.text:
            return [final]
        return [raw] if raw is not None else []

    def _transcript(self, update: stt_pb2.AlternativeUpdate, *, is_final: bool) -> Transcript:
        if not update.alternatives:
            return Transcript("", is_final=is_final, language=self.language)
        best = update.alternatives[0]
        language = self.language
        if best.languages:
            language = max(best.languages, key=lambda est: est.probability).language_code or language
        return Transcript(best.text.strip(), is_final=is_final, language=language)


class YandexAsr(ProviderBase):
    """``AsrProvider`` over SpeechKit STT v3 streaming recognition."""

    name = "yandex"
    # built per robot (its keys and options) and shared by the robot's calls: AsrService
    sample_rates = (8000, 16000)

    @classmethod
    def from_context(cls, ctx: ProviderContext) -> Self:
        return cls(ctx.require_robot(cls.name))

    def __init__(self, robot: RobotConfig, *, channel_factory: ChannelFactory | None = None) -> None:
        try:
            self.options = YandexAsrOptions.model_validate(robot.settings.asr.providers.get(self.name, {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ProviderError(
                self.name, f"invalid asr.providers.yandex: {problems}", retryable=False
            ) from None
        self.language = robot.settings.asr.language
        api_key, iam_token = robot.secret(API_KEY_NAME), robot.secret(IAM_TOKEN_NAME)
        register_secret(api_key)
        register_secret(iam_token)
        auth = self.options.auth or ("iam" if iam_token and not api_key else "api_key")
        secret = api_key if auth == "api_key" else iam_token
        if not secret:
            missing = API_KEY_NAME if auth == "api_key" else IAM_TOKEN_NAME
            raise ProviderError(self.name, f"{missing} is not set", retryable=False)
        self._secret = secret
        scheme = "Api-Key" if auth == "api_key" else "Bearer"
        # gRPC metadata keys must be lower-case (yandex-speechkit.md, conventions)
        self._metadata: tuple[tuple[str, str], ...] = (
            ("authorization", f"{scheme} {secret}"),
            ("x-data-logging-enabled", "true" if self.options.data_logging else "false"),
        )
        if self.options.folder_id:
            self._metadata += (("x-folder-id", self.options.folder_id),)
        self._channel_factory = channel_factory or _default_channel(self.options.tls)
        self._channel: grpc.aio.Channel | None = None
        self.last_usage = AsrUsage()
        self.total_audio_s = 0.0

    def _clean(self, text: str) -> str:
        return mask_secrets(text.replace(self._secret, "***"))[:MAX_ERROR_TEXT]

    def _session_options(self, sample_rate: int, language: str) -> stt_pb2.StreamingOptions:
        o = self.options
        normalization = stt_pb2.TextNormalizationOptions(
            text_normalization=stt_pb2.TextNormalizationOptions.TEXT_NORMALIZATION_ENABLED
            if o.text_normalization
            else stt_pb2.TextNormalizationOptions.TEXT_NORMALIZATION_DISABLED,
            profanity_filter=o.profanity_filter,
        )
        raw_audio = stt_pb2.RawAudio(
            audio_encoding=stt_pb2.RawAudio.LINEAR16_PCM, sample_rate_hertz=sample_rate, audio_channel_count=1
        )
        model = stt_pb2.RecognitionModelOptions(
            model=o.model,
            audio_format=stt_pb2.AudioFormatOptions(raw_audio=raw_audio),
            text_normalization=normalization,
            audio_processing_type=stt_pb2.RecognitionModelOptions.REAL_TIME,
        )
        if language:
            model.language_restriction.CopyFrom(
                stt_pb2.LanguageRestrictionOptions(
                    restriction_type=stt_pb2.LanguageRestrictionOptions.WHITELIST, language_code=[language]
                )
            )
        eou = stt_pb2.DefaultEouClassifier(
            type=stt_pb2.DefaultEouClassifier.HIGH
            if o.eou_sensitivity == "high"
            else stt_pb2.DefaultEouClassifier.DEFAULT,
            max_pause_between_words_hint_ms=o.max_pause_between_words_hint_ms,
        )
        return stt_pb2.StreamingOptions(
            recognition_model=model, eou_classifier=stt_pb2.EouClassifierOptions(default_classifier=eou)
        )

    async def stream_recognize(
        self, audio: AsyncIterable[bytes], sample_rate: int, language: str
    ) -> AsyncIterator[Transcript]:
        if sample_rate not in self.sample_rates:
            supported = ", ".join(map(str, self.sample_rates))
            raise ProviderError(
                self.name,
                f"unsupported sample rate {sample_rate} Hz (supported: {supported})",
                retryable=False,
            )
        tag = yandex_language(language or self.language)
        usage = self.last_usage = AsrUsage(sample_rate=sample_rate)
        if self._channel is None:
            self._channel = self._channel_factory(self.options.endpoint, CHANNEL_OPTIONS)
        stub = stt_service_pb2_grpc.RecognizerStub(self._channel)
        metadata = (*self._metadata, ("x-client-request-id", str(uuid.uuid4())))
        call = stub.RecognizeStreaming(metadata=metadata)
        first_status = _FirstStatus(call)
        watchdog = _Watchdog(self.options.first_result_timeout_s, self.options.finish_timeout_s)
        results = _Results(self.options.text_normalization, tag)
        writer = asyncio.create_task(self._send_audio(call, audio, sample_rate, tag, usage, watchdog))
        watcher = asyncio.create_task(watchdog.watch(call))
        try:
            while (response := await self._read(call, watchdog, first_status)) is not None:
                event = response.WhichOneof("Event")
                watchdog.response(is_result=event not in (None, "status_code"))
                usage.server_received_ms = max(
                    usage.server_received_ms, response.audio_cursors.received_data_ms
                )
                for transcript in results.feed(response):
                    yield transcript
            for transcript in results.flush():
                yield transcript
            if watchdog.input_done_at is None:
                raise ProviderProtocolError(self.name, "the service closed the stream before the audio ended")
        finally:
            call.cancel()  # a no-op when the call has ended; aborts it at once on aclose / cancellation
            watchdog.stop()
            writer.cancel()
            watcher.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            self.total_audio_s += usage.audio_s

    async def _read(
        self, call: grpc.aio.StreamStreamCall, watchdog: _Watchdog, first_status: _FirstStatus
    ) -> stt_pb2.StreamingResponse | None:
        """The next response, None at the end of the stream; failures become provider errors."""
        try:
            response = await call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or not (watchdog.timed_out or watchdog.input_error):
                raise
            raise self._local_cancel_reason(watchdog) from None
        except grpc.aio.AioRpcError as exc:
            if watchdog.timed_out or watchdog.input_error:
                raise self._local_cancel_reason(watchdog) from None
            code, details = first_status.of(exc)
            if code == grpc.StatusCode.OK:
                return None  # the service ended the call cleanly; only a late write of ours failed
            raise self._rpc_error(code, details, watchdog) from None
        if response is grpc.aio.EOF:
            return None
        if not isinstance(response, stt_pb2.StreamingResponse):  # grpc gives None for undecodable bytes
            log.warning("asr.yandex_bad_message")
            raise ProviderProtocolError(self.name, "undecodable message from the service")
        return response

    def _local_cancel_reason(self, watchdog: _Watchdog) -> BaseException:
        if watchdog.input_error is not None:
            return watchdog.input_error  # the audio source failed: its own error, not the provider's
        log.warning("asr.yandex_timeout", reason=watchdog.timed_out)
        return ProviderTimeoutError(self.name, watchdog.timed_out)

    def _rpc_error(self, code: grpc.StatusCode, raw_details: str, watchdog: _Watchdog) -> ProviderError:
        details = self._clean(raw_details)
        log.warning("asr.yandex_failed", grpc_status=code.name, detail=details)
        if code == grpc.StatusCode.CANCELLED:
            return ProviderConnectionError(self.name, f"stream cancelled by the service {details}".strip())
        if code == grpc.StatusCode.UNAVAILABLE and not watchdog.any_response and "connect" in details.lower():
            return ProviderConnectionError(self.name, f"cannot connect to {self.options.endpoint}: {details}")
        status = _HTTP_OF_GRPC.get(code, 500)
        return error_from_status(self.name, status, f"{code.name} {details}".strip())

    async def _send_audio(
        self,
        call: grpc.aio.StreamStreamCall,
        audio: AsyncIterable[bytes],
        sample_rate: int,
        language: str,
        usage: AsrUsage,
        watchdog: _Watchdog,
    ) -> None:
        piece = sample_rate * 2 * CHUNK_MS // 1000
        try:
            await call.write(
                stt_pb2.StreamingRequest(session_options=self._session_options(sample_rate, language))
            )
            async for pcm in audio:
                for start in range(0, len(pcm), piece):
                    data = pcm[start : start + piece]
                    watchdog.audio_sent()
                    await call.write(stt_pb2.StreamingRequest(chunk=stt_pb2.AudioChunk(data=data)))
                    usage.bytes_sent += len(data)
            watchdog.input_finished()
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the call has ended: the reader reports its status
        except Exception as exc:
            watchdog.input_error = exc
            call.cancel()
            raise

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
