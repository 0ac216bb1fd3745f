"""A real grpcio (aio) server for SpeechKit STT v3 ``speechkit.stt.v3.Recognizer/RecognizeStreaming``.

Started on 127.0.0.1 at a random port inside the test's event loop::

    async with YandexSttStandIn() as server:
        server.behavior.utterances = [Utterance("алло добрый день", audio_ms=800)]
        ...  # robot asr.providers.yandex = {"endpoint": server.endpoint, "tls": False, ...}

It answers as docs/protocols/yandex-speechkit.md says: a ``status_code`` first, ``partial`` updates as audio
arrives, and per utterance ``final`` → ``final_refinement`` (only when the client asked for text
normalization) → ``eou_update`` → an empty ``partial``. Utterances are scheduled by audio length:
each one ends after ``audio_ms`` of received audio, or when the client half-closes the stream.

Knobs (``server.behavior``): accepted API key / IAM token, required folder id, a status code to fail
with before any answer, abort / undecodable bytes / an early OK end after N responses, stall
(answer nothing after the first status), no refinements. Every stream is recorded (metadata,
session options, audio bytes) and a client cancellation is observed through the RPC's done
callback (``recorded.client_cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from yandex.cloud.ai.stt.v3 import stt_pb2, stt_service_pb2_grpc

SERVICE = "speechkit.stt.v3.Recognizer"
GARBAGE = b"\x0a\xff\xff\xff"  # field 1, length-delimited, with a truncated length varint
ACCEPTED_RATES = (8000, 16000, 48000)


@dataclass
class Utterance:
    text: str
    audio_ms: int = 1000
    normalized: str | None = None  # final_refinement text; default: the text capitalized, with a dot


@dataclass
class Behavior:
    utterances: list[Utterance] = field(
        default_factory=lambda: [Utterance("здравствуйте у меня есть собака", audio_ms=1200)]
    )
    partial_every_ms: int = 200
    api_key: str = "stand-in-api-key"
    iam_token: str = "stand-in-iam-token"
    folder_id: str | None = "b1gstandinfolder"  # None: the x-folder-id header is not checked
    fail_code: grpc.StatusCode | None = None  # abort before any response
    fail_message: str = "quota exceeded"
    abort_after: int | None = None  # abort after this many responses
    abort_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    garbage_after: int | None = None  # send undecodable bytes after this many responses
    end_after: int | None = None  # end the call with OK after this many responses, audio or not
    stall: bool = False  # one status_code, then nothing, while still reading audio
    send_refinements: bool = True
    gap_limit_s: float = 5.0  # the real service ends a session after 5 s without a message


@dataclass
class StreamRecord:
    metadata: dict[str, str] = field(default_factory=dict)
    options: stt_pb2.StreamingOptions | None = None
    sample_rate: int = 0
    audio_bytes: int = 0
    audio_chunks: int = 0
    responses_sent: int = 0
    half_closed: bool = False
    finished_ok: bool = False
    aborted: bool = False
    client_cancelled: bool = False
    cancelled_at: float = 0.0


@dataclass
class Recorded:
    streams: list[StreamRecord] = field(default_factory=list)
    client_cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class _EndNow(Exception):
    """Scripted early end of the call with status OK."""


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _alternative(text: str, language: str) -> stt_pb2.AlternativeUpdate:
    if not text:
        return stt_pb2.AlternativeUpdate()
    alt = stt_pb2.Alternative(
        text=text,
        words=[stt_pb2.Word(text=w) for w in text.split()],
        languages=[stt_pb2.LanguageEstimation(language_code=language, probability=1.0)],
    )
    return stt_pb2.AlternativeUpdate(alternatives=[alt], channel_tag="0")


def _normalized(utterance: Utterance) -> str:
    if utterance.normalized is not None:
        return utterance.normalized
    text = utterance.text
    return (text[:1].upper() + text[1:] + ".") if text else ""


class _Session:
    """One RecognizeStreaming call: turns received audio into scripted responses."""

    def __init__(self, behavior: Behavior, record: StreamRecord) -> None:
        self.b = behavior
        self.record = record
        self.received_ms = 0.0
        self.utterance = 0
        self.utterance_start_ms = 0.0
        self.last_partial_ms = 0.0
        self.final_index = 0
        self.final_time_ms = 0
        self.normalize = False
        self.language = "ru-RU"

    def start(self, options: stt_pb2.StreamingOptions) -> None:
        model = options.recognition_model
        raw = model.audio_format.raw_audio
        if not model.audio_format.HasField("raw_audio"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "only raw_audio is scripted")
        if raw.audio_encoding != stt_pb2.RawAudio.LINEAR16_PCM:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported audio encoding")
        if raw.sample_rate_hertz not in ACCEPTED_RATES or raw.audio_channel_count != 1:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported sample rate or channel count")
        self.record.sample_rate = int(raw.sample_rate_hertz)
        self.normalize = (
            model.text_normalization.text_normalization
            == stt_pb2.TextNormalizationOptions.TEXT_NORMALIZATION_ENABLED
        )
        if model.language_restriction.language_code:
            self.language = model.language_restriction.language_code[0]

    def response(self, **event: Any) -> stt_pb2.StreamingResponse:
        cursors = stt_pb2.AudioCursors(
            received_data_ms=int(self.received_ms),
            partial_time_ms=int(self.received_ms),
            final_time_ms=self.final_time_ms,
            final_index=self.final_index,
        )
        return stt_pb2.StreamingResponse(audio_cursors=cursors, channel_tag="0", **event)

    def on_audio(self, data: bytes) -> list[stt_pb2.StreamingResponse]:
        self.record.audio_bytes += len(data)
        self.record.audio_chunks += 1
        self.received_ms += len(data) * 1000 / (2 * self.record.sample_rate)
        out: list[stt_pb2.StreamingResponse] = []
        utterances = self.b.utterances
        while self.utterance < len(utterances):
            current = utterances[self.utterance]
            spoken_ms = self.received_ms - self.utterance_start_ms
            if spoken_ms >= current.audio_ms:
                out += self.finish_utterance(self.utterance_start_ms + current.audio_ms)
                continue
            if self.received_ms - self.last_partial_ms >= self.b.partial_every_ms:
                words = current.text.split()
                shown = words[: max(1, math.floor(len(words) * spoken_ms / current.audio_ms))]
                out.append(self.response(partial=_alternative(" ".join(shown), self.language)))
                self.last_partial_ms = self.received_ms
            return out
        if self.received_ms - self.last_partial_ms >= self.b.partial_every_ms:  # silence after the script
            out.append(self.response(partial=stt_pb2.AlternativeUpdate()))
            self.last_partial_ms = self.received_ms
        return out

    def finish_utterance(self, end_ms: float) -> list[stt_pb2.StreamingResponse]:
        utterance = self.b.utterances[self.utterance]
        self.utterance += 1
        self.utterance_start_ms = self.last_partial_ms = end_ms
        self.final_time_ms = int(end_ms)
        out = [
            self.response(partial=_alternative(utterance.text, self.language)),
            self.response(final=_alternative(utterance.text, self.language)),
        ]
        if self.normalize and self.b.send_refinements:
            refinement = stt_pb2.FinalRefinement(
                final_index=self.final_index,
                normalized_text=_alternative(_normalized(utterance), self.language),
            )
            out.append(self.response(final_refinement=refinement))
        self.final_index += 1
        out.append(self.response(eou_update=stt_pb2.EouUpdate(time_ms=int(end_ms))))
        out.append(self.response(partial=stt_pb2.AlternativeUpdate()))
        return out

    def on_half_close(self) -> list[stt_pb2.StreamingResponse]:
        out: list[stt_pb2.StreamingResponse] = []
        if self.utterance < len(self.b.utterances) and self.received_ms > self.utterance_start_ms:
            out += self.finish_utterance(self.received_ms)
        closed = stt_pb2.StatusCode(code_type=stt_pb2.CLOSED, message="session closed")
        out.append(self.response(status_code=closed))
        return out


class _Recognizer(stt_service_pb2_grpc.RecognizerServicer):
    """``RecognizeStreaming`` with scripted behaviour (see the module docstring)."""

    def __init__(self, server: YandexSttStandIn) -> None:
        self.server = server

    def _check_auth(self, metadata: dict[str, str]) -> None:
        b = self.server.behavior
        auth = metadata.get("authorization", "")
        if auth not in (f"Api-Key {b.api_key}", f"Bearer {b.iam_token}"):
            # echoes what it was given (real services do quote bad tokens): clients must mask it
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"Unknown api key or token: {auth!r}")
        if b.folder_id is not None and metadata.get("x-folder-id") != b.folder_id:
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, "Permission denied to the folder")

    async def RecognizeStreaming(  # type: ignore[override]  # also yields raw bytes (garbage knob)
        self, requests: AsyncIterator[stt_pb2.StreamingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stt_pb2.StreamingResponse | bytes]:
        record = StreamRecord(metadata={k: str(v) for k, v in context.invocation_metadata() or ()})
        self.server.recorded.streams.append(record)
        context.add_done_callback(lambda _ctx: self._on_done(record))
        b = self.server.behavior
        try:
            self._check_auth(record.metadata)
            if b.fail_code is not None:
                raise _Abort(b.fail_code, b.fail_message)
            session = _Session(b, record)
            first = await self._next(requests)
            if first is None or first.WhichOneof("Event") != "session_options":
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be session_options")
            record.options = first.session_options
            session.start(first.session_options)
            working = stt_pb2.StatusCode(code_type=stt_pb2.WORKING, message="working")
            async for item in self._send([session.response(status_code=working)], record):
                yield item
            while True:
                request = await self._next(requests)
                if request is None:
                    record.half_closed = True  # or the client cancelled: _on_done tells them apart
                    if b.stall:
                        await asyncio.Event().wait()  # until the client gives up and cancels
                    async for item in self._send(session.on_half_close(), record):
                        yield item
                    break
                if request.WhichOneof("Event") == "chunk":
                    responses = session.on_audio(request.chunk.data)
                    if not b.stall:
                        async for item in self._send(responses, record):
                            yield item
            record.finished_ok = True
        except _EndNow:
            record.finished_ok = True
        except _Abort as exc:
            record.aborted = True
            await context.abort(exc.code, exc.details)

    async def _next(
        self, requests: AsyncIterator[stt_pb2.StreamingRequest]
    ) -> stt_pb2.StreamingRequest | None:
        try:
            async with asyncio.timeout(self.server.behavior.gap_limit_s):
                return await anext(requests)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no audio for too long") from None

    async def _send(
        self, responses: list[stt_pb2.StreamingResponse], record: StreamRecord
    ) -> AsyncIterator[stt_pb2.StreamingResponse | bytes]:
        b = self.server.behavior
        for response in responses:
            if b.end_after is not None and record.responses_sent >= b.end_after:
                raise _EndNow
            if b.abort_after is not None and record.responses_sent >= b.abort_after:
                raise _Abort(b.abort_code, "internal server error")
            if b.garbage_after is not None and record.responses_sent >= b.garbage_after:
                record.responses_sent += 1
                yield GARBAGE
                continue
            record.responses_sent += 1
            yield response

    def _on_done(self, record: StreamRecord) -> None:
        # The handler sets finished_ok / aborted before the RPC ends; a call that ends with neither
        # was cancelled by the client (grpc then just stops iterating the handler).
        if not record.finished_ok and not record.aborted:
            record.client_cancelled = True
            record.cancelled_at = time.monotonic()
            self.server.recorded.client_cancelled.set()


def _serialize(message: stt_pb2.StreamingResponse | bytes) -> bytes:
    """Like the generated serializer, but lets scripted garbage bytes through untouched."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class YandexSttStandIn:
    def __init__(self) -> None:
        self.behavior = Behavior()
        self.recorded = Recorded()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        # the same handler add_RecognizerServicer_to_server registers, with a tolerant serializer
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "RecognizeStreaming": grpc.stream_stream_rpc_method_handler(
                    _Recognizer(self).RecognizeStreaming,
                    request_deserializer=stt_pb2.StreamingRequest.FromString,
                    response_serializer=_serialize,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> YandexSttStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
