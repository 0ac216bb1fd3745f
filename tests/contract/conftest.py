"""One harness per cloud provider, so the contract suites run the SAME assertions against each of them.

A harness owns a running stand-in and a provider pointed at it, and knows how to script that stand-in
in the vocabulary of the contract: a long, slow stream (so "mid-stream" is reachable), a failure
with a given HTTP-like status whose vendor message echoes the secret, and the event the stand-in
sets when it observes the client going away. Adding a provider to a role = one harness class + one
line in that role's registry below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import pytest
from _pytest.mark.structures import ParameterSet
from structlog.testing import capture_logs

from tests.stand_ins import yandex_tts_server, zvukogram_server
from tests.stand_ins.elevenlabs_server import VALID_KEY, ElevenLabsStandIn
from tests.stand_ins.gemini_server import (
    GeminiStandIn,
    permission_denied,
    quota_exhausted,
    server_error,
    unauthenticated,
)
from tests.stand_ins.openai_server import OpenAIStandIn
from tests.stand_ins.yandex_stt_server import Utterance, YandexSttStandIn
from tests.stand_ins.yandex_tts_server import YandexTtsStandIn
from tests.stand_ins.yandexgpt_server import YandexGptStandIn
from tests.stand_ins.zvukogram_server import ZvukogramStandIn
from voiceplatform.config import RobotConfig
from voiceplatform.config.robot import RobotSettings
from voiceplatform.providers import (
    LlmChunk,
    LlmOptions,
    ProviderError,
    ProviderStatusError,
    Transcript,
)
from voiceplatform.wire import ChatMessage
from vp_asr.providers.yandex import YandexAsr
from vp_llm.providers.gemini import GeminiLlm
from vp_llm.providers.openai_compat import OpenAICompatible
from vp_llm.providers.yandexgpt import YandexGpt
from vp_tts.providers.elevenlabs import ElevenLabsTts
from vp_tts.providers.yandex import YandexTts
from vp_tts.providers.zvukogram import ZvukogramTts

T = TypeVar("T")
MESSAGES = [ChatMessage(role="system", content="Будь краток."), ChatMessage(role="user", content="Привет")]
LONG_REPLY = " ".join(f"слово{i}." for i in range(60))
TTS_TEXT = "Добрый день! Чем могу помочь?"
LONG_TTS_TEXT = " ".join(["Это длинное предложение для проверки потоковой передачи."] * 4)
FAILURE_TEXT = "request refused"  # every scripted failure message starts with this, then echoes the secret


def robot(section: str, options: dict[str, Any], env: dict[str, str]) -> RobotConfig:
    settings = RobotSettings.model_validate({section: options})
    return RobotConfig(f"contract_{section}", Path("."), settings, "", {}, env)


class Harness(Generic[T]):
    """A provider of one role wired to its stand-in. Subclasses fill in the vendor specifics."""

    name: str = ""
    secrets: tuple[str, ...] = ()
    disconnect_observed: asyncio.Event  # set by the stand-in when it sees the client go away

    def stream(self) -> AsyncIterator[T]:
        raise NotImplementedError

    def script_slow_stream(self) -> None:
        """Many chunks with a delay between them, so the test can leave in the middle."""
        raise NotImplementedError

    def script_failure(self, status: int) -> None:
        """Fail the next request with ``status`` (or the vendor's equivalent) before any output."""
        raise NotImplementedError

    def failure_message(self) -> str:
        return f"{FAILURE_TEXT} for " + " ".join(self.secrets)

    async def run(self) -> list[T]:
        async with contextlib.aclosing(self.stream()) as stream:  # type: ignore[type-var]
            return [item async for item in stream]

    async def aclose(self) -> None:
        raise NotImplementedError


LlmHarness = Harness[LlmChunk]
TtsHarness = Harness[bytes]
AsrHarness = Harness[Transcript]


# ---- LLM ------------------------------------------------------------------------------------------
class OpenAIHarness(LlmHarness):
    name, secrets = "openai", ("sk-contract-secret-4242",)

    def __init__(self, server: OpenAIStandIn) -> None:
        self.server = server
        self.disconnect_observed = server.recorded.client_closed
        llm = {"provider": "openai", "base_url": server.base_url, "model": "stand-in", "timeout_s": 5}
        self.provider = OpenAICompatible(robot("llm", llm, {"OPENAI_API_KEY": self.secrets[0]}))

    def stream(self) -> AsyncIterator[LlmChunk]:
        return self.provider.stream_complete(MESSAGES, LlmOptions())

    def script_slow_stream(self) -> None:
        self.server.behavior.reply, self.server.behavior.chunk_delay_s = LONG_REPLY, 0.05

    def script_failure(self, status: int) -> None:
        self.server.behavior.fail_status, self.server.behavior.fail_message = status, self.failure_message()

    async def aclose(self) -> None:
        await self.provider.aclose()


class YandexGptHarness(LlmHarness):
    name, secrets = "yandexgpt", ("AQVN-contract-gpt-secret-7731",)
    folder = "b1gcontractfolder"

    def __init__(self, server: YandexGptStandIn) -> None:
        self.server = server
        self.disconnect_observed = server.recorded.client_closed
        options = {"base_url": server.base_url, "folder_id": self.folder}
        llm = {"provider": "yandex", "timeout_s": 5, "providers": {"yandex": options}}
        self.provider = YandexGpt(robot("llm", llm, {"YANDEX_API_KEY": self.secrets[0]}))

    def stream(self) -> AsyncIterator[LlmChunk]:
        return self.provider.stream_complete(MESSAGES, LlmOptions())

    def script_slow_stream(self) -> None:
        self.server.behavior.reply, self.server.behavior.line_delay_s = LONG_REPLY, 0.05

    def script_failure(self, status: int) -> None:
        self.server.behavior.fail_status, self.server.behavior.fail_message = status, self.failure_message()

    async def aclose(self) -> None:
        await self.provider.aclose()


class GeminiHarness(LlmHarness):
    """ONE key and ONE model: with nothing to rotate to, the scripted status surfaces to the caller."""

    name, secrets = "gemini", ("AIzaSyContract-secret-key-aaaa",)
    model = "gemini-2.5-flash"

    def __init__(self, server: GeminiStandIn) -> None:
        self.server = server
        self.disconnect_observed = server.recorded.client_closed
        options = {"base_url": server.base_url, "models": [self.model]}
        llm = {"provider": "gemini", "timeout_s": 5, "providers": {"gemini": options}}
        self.provider = GeminiLlm(robot("llm", llm, {"GEMINI_API_KEYS": self.secrets[0]}))

    def stream(self) -> AsyncIterator[LlmChunk]:
        return self.provider.stream_complete(MESSAGES, LlmOptions())

    def script_slow_stream(self) -> None:
        self.server.behavior.reply, self.server.behavior.chunk_delay_s = LONG_REPLY, 0.05

    def script_failure(self, status: int) -> None:
        # Google RPC error bodies, as Gemini sends them (401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
        # 429 RESOURCE_EXHAUSTED with QuotaFailure/RetryInfo, 5xx INTERNAL/UNAVAILABLE)
        if status == 401:
            rule = unauthenticated()
        elif status == 403:
            rule = permission_denied()
        elif status == 429:
            rule = quota_exhausted(self.model)
        else:
            rule = server_error(status, times=None)
        assert rule.body is not None
        rule.body["error"]["message"] += " " + self.failure_message()
        self.server.on(rule)

    async def aclose(self) -> None:
        await self.provider.aclose()


# ---- TTS ------------------------------------------------------------------------------------------
class YandexTtsHarness(TtsHarness):
    secrets = (yandex_tts_server.API_KEY,)

    def __init__(self, server: YandexTtsStandIn, api: str) -> None:
        self.name = f"yandex-{api}"
        self.server = server
        self.disconnect_observed = server.recorded.client_closed
        self.text = TTS_TEXT
        options = {"base_url": server.base_url, "api": api}
        tts = {"provider": "yandex", "voice": "alena", "sample_rate": 8000, "providers": {"yandex": options}}
        self.provider = YandexTts(robot("tts", tts, {"YANDEX_API_KEY": self.secrets[0]}))

    def stream(self) -> AsyncIterator[bytes]:
        return self.provider.stream_synthesize(self.text, "alena")

    def script_slow_stream(self) -> None:
        self.text, self.server.behavior.chunk_delay_s = LONG_TTS_TEXT, 0.05

    def script_failure(self, status: int) -> None:
        self.server.behavior.fail_status, self.server.behavior.fail_message = status, self.failure_message()

    async def aclose(self) -> None:
        await self.provider.aclose()


ELEVENLABS_CODES = {
    401: "invalid_api_key",
    403: "only_for_creator+",
    429: "too_many_concurrent_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ElevenLabsHarness(TtsHarness):
    secrets = (VALID_KEY,)
    voice = "21m00Tcm4TlvDq8ikWAM"

    def __init__(self, server: ElevenLabsStandIn, transport: str) -> None:
        self.name = f"elevenlabs-{transport}"
        self.server = server
        self.disconnect_observed = server.recorded.client_closed
        self.text = TTS_TEXT
        options = {"base_url": server.base_url, "transport": transport, "stall_timeout_s": 3.0}
        tts = {"provider": "elevenlabs", "voice": self.voice, "providers": {"elevenlabs": options}}
        self.provider = ElevenLabsTts(robot("tts", tts, {"TTS_API_KEY": self.secrets[0]}))

    def stream(self) -> AsyncIterator[bytes]:
        return self.provider.stream_synthesize(self.text, "")

    def script_slow_stream(self) -> None:
        self.text, self.server.behavior.chunk_delay_s = LONG_TTS_TEXT, 0.05

    def script_failure(self, status: int) -> None:
        # WS: the stand-in's default "frame" mode sends the error as a frame after the handshake
        b = self.server.behavior
        b.fail_status, b.fail_code, b.fail_message = status, ELEVENLABS_CODES[status], self.failure_message()

    async def aclose(self) -> None:
        await self.provider.aclose()


class ZvukogramHarness(TtsHarness):
    name = "zvukogram"
    secrets = (zvukogram_server.TOKEN, zvukogram_server.EMAIL)

    def __init__(self, server: ZvukogramStandIn) -> None:
        self.server = server
        self.disconnect_observed = server.recorded.client_closed
        options = {"base_url": server.base_url, "poll_interval_s": 0.02}
        tts = {"provider": "zvukogram", "voice": "Алена", "providers": {"zvukogram": options}}
        env = {"TTS_TOKEN": zvukogram_server.TOKEN, "TTS_EMAIL": zvukogram_server.EMAIL}
        self.provider = ZvukogramTts(robot("tts", tts, env))

    def stream(self) -> AsyncIterator[bytes]:
        return self.provider.stream_synthesize(TTS_TEXT, "Алена")

    def script_slow_stream(self) -> None:
        # the provider fetches the whole file before yielding (it must know the format and length), so
        # the download is slowed only a little: the contract's close clause is xfail for this provider
        self.server.behavior.file_chunk_bytes, self.server.behavior.file_chunk_delay_s = 4096, 0.02

    def script_failure(self, status: int) -> None:
        # HTTP-level status on the API call. Zvukogram's own refusals (bad token) come as HTTP 200 with
        # {"status": -1, "error": ...}; the provider maps those to non-retryable errors, tested in
        # tests/tts/test_zvukogram_provider.py::test_api_errors. The contract scripts the HTTP form.
        b = self.server.behavior
        b.fail_status, b.fail_message = status, self.failure_message()

    async def aclose(self) -> None:
        await self.provider.aclose()


# ---- ASR ------------------------------------------------------------------------------------------
# gRPC has no HTTP statuses: the contract's status is scripted as the gRPC code Yandex's
# gRPC↔HTTP table (docs/protocols/yandex-speechkit.md) pairs with it.
GRPC_CODE_OF_STATUS = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


class YandexAsrHarness(AsrHarness):
    name, secrets = "yandex", ("AQVN-contract-stt-secret-4417",)
    folder, rate = "b1gcontractstt", 8000

    def __init__(self, server: YandexSttStandIn) -> None:
        self.server = server
        server.behavior.api_key, server.behavior.folder_id = self.secrets[0], self.folder
        server.behavior.utterances = [Utterance("алло добрый день", audio_ms=800)]
        self.disconnect_observed = server.recorded.client_cancelled
        self.audio_ms, self.pace_s = 1500, 0.0
        options = {"endpoint": server.endpoint, "tls": False, "folder_id": self.folder}
        asr = {"provider": "yandex", "language": "ru-RU", "providers": {"yandex": options}}
        self.provider = YandexAsr(robot("asr", asr, {"YANDEX_API_KEY": self.secrets[0]}))

    async def _audio(self) -> AsyncIterator[bytes]:
        frame = bytes(2 * self.rate * 20 // 1000)  # 20 ms of silence: the stand-in scripts the words
        for _ in range(self.audio_ms // 20):
            yield frame
            if self.pace_s:
                await asyncio.sleep(self.pace_s)

    def stream(self) -> AsyncIterator[Transcript]:
        return self.provider.stream_recognize(self._audio(), self.rate, "")

    def script_slow_stream(self) -> None:
        self.audio_ms, self.pace_s = 10_000, 0.02  # real time: partials keep coming for 10 s
        self.server.behavior.utterances = [Utterance("алло " * 40, audio_ms=9000)]

    def script_failure(self, status: int) -> None:
        self.server.behavior.fail_code = GRPC_CODE_OF_STATUS[status]
        self.server.behavior.fail_message = self.failure_message()

    async def aclose(self) -> None:
        await self.provider.aclose()


# ---- registries: one line per provider ------------------------------------------------------------
H = TypeVar("H", bound=Harness[Any])


def _hosted(
    stand_in: Callable[[], Any], build: Callable[[Any], H]
) -> Callable[[], AbstractAsyncContextManager[H]]:
    @contextlib.asynccontextmanager
    async def harness() -> AsyncIterator[H]:
        async with stand_in() as server:
            h = build(server)
            try:
                yield h
            finally:
                await h.aclose()

    return harness


LLM_HARNESSES: dict[str, Callable[[], AbstractAsyncContextManager[LlmHarness]]] = {
    "openai": _hosted(OpenAIStandIn, OpenAIHarness),
    "yandexgpt": _hosted(
        lambda: YandexGptStandIn(api_key=YandexGptHarness.secrets[0], folder_id=YandexGptHarness.folder),
        YandexGptHarness,
    ),
    "gemini": _hosted(GeminiStandIn, GeminiHarness),
}
TTS_HARNESSES: dict[str, Callable[[], AbstractAsyncContextManager[TtsHarness]]] = {
    "yandex-v3": _hosted(YandexTtsStandIn, lambda s: YandexTtsHarness(s, "v3")),
    "yandex-v1": _hosted(YandexTtsStandIn, lambda s: YandexTtsHarness(s, "v1")),
    "elevenlabs-http": _hosted(ElevenLabsStandIn, lambda s: ElevenLabsHarness(s, "http")),
    "elevenlabs-ws": _hosted(ElevenLabsStandIn, lambda s: ElevenLabsHarness(s, "ws")),
    "zvukogram": _hosted(ZvukogramStandIn, ZvukogramHarness),
}
ASR_HARNESSES: dict[str, Callable[[], AbstractAsyncContextManager[AsrHarness]]] = {
    "yandex": _hosted(YandexSttStandIn, YandexAsrHarness),
}


def providers(names: Sequence[str], xfail: dict[str, str] | None = None) -> list[ParameterSet]:
    """Test params for every provider of a role; ``xfail`` marks the few that cannot meet one clause."""
    marks = xfail or {}
    return [
        pytest.param(n, id=n, marks=[pytest.mark.xfail(strict=True, reason=marks[n])] if n in marks else [])
        for n in names
    ]


@pytest.fixture
async def llm_harness(request: pytest.FixtureRequest) -> AsyncIterator[LlmHarness]:
    async with LLM_HARNESSES[request.param]() as harness:
        yield harness


@pytest.fixture
async def tts_harness(request: pytest.FixtureRequest) -> AsyncIterator[TtsHarness]:
    async with TTS_HARNESSES[request.param]() as harness:
        yield harness


@pytest.fixture
async def asr_harness(request: pytest.FixtureRequest) -> AsyncIterator[AsrHarness]:
    async with ASR_HARNESSES[request.param]() as harness:
        yield harness


# ---- the contract clauses, the same for every provider of every role -----------------------------
CLOSE_OBSERVED_WITHIN_S = 0.5


async def check_streams(harness: Harness[T], content: Callable[[T], object]) -> None:
    """More than one non-empty piece arrives before the end of the stream."""
    pieces = [piece for piece in map(content, await harness.run()) if piece]
    assert len(pieces) > 1, f"{harness.name}: {len(pieces)} non-empty piece(s)"


async def check_closes_on_iterator_close(harness: Harness[T], content: Callable[[T], object]) -> None:
    """Closing the iterator mid-stream makes the stand-in see the client leave at once."""
    harness.script_slow_stream()
    stream = harness.stream()
    async for item in stream:
        if content(item):
            break
    else:
        raise AssertionError(f"{harness.name}: the stream ended before any content")
    assert not harness.disconnect_observed.is_set()
    aclose = getattr(stream, "aclose", None)
    assert aclose is not None, f"{harness.name}: the provider's stream cannot be closed"

    async def close_and_observe() -> None:
        await aclose()
        await harness.disconnect_observed.wait()

    # the budget covers aclose() itself too: a close that blocks is as bad as one that never lands
    await asyncio.wait_for(close_and_observe(), CLOSE_OBSERVED_WITHIN_S)


async def check_status(harness: Harness[T], status: int, retryable: bool) -> None:
    harness.script_failure(status)
    with pytest.raises(ProviderError) as err:
        await harness.run()
    assert err.value.retryable is retryable
    assert isinstance(err.value, ProviderStatusError) and err.value.status == status


async def check_secrets_masked(harness: Harness[T], status: int, caplog: pytest.LogCaptureFixture) -> None:
    """A good call and a failed one (the vendor's message echoes the secret): the secret shows up in
    neither the error, nor structlog events, nor stdlib log records (httpx, websockets, grpc...)."""
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        await harness.run()
        harness.script_failure(status)
        with pytest.raises(ProviderError) as err:
            await harness.run()
    stdlib = [record.getMessage() for record in caplog.records]
    for secret in harness.secrets:
        assert secret not in str(err.value) and secret not in repr(err.value)
        assert secret not in repr(events)
        assert not [line for line in stdlib if secret in line]
