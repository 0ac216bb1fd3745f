"""The ``yandex`` ASR provider against a real grpcio stand-in of SpeechKit STT v3 RecognizeStreaming."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs
from yandex.cloud.ai.stt.v3 import stt_pb2

from tests.stand_ins.yandex_stt_server import Utterance, YandexSttStandIn
from voiceplatform.config import load_robot
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
    Transcript,
)
from vp_asr.providers.yandex import YandexAsr, _Results, yandex_language

API_KEY = "AQVN-stt-test-secret-4417"
IAM_TOKEN = "t1.stt-iam-secret-5521"
FOLDER = "b1gsttfolder"
TWO_UTTERANCES = [Utterance("алло добрый день", audio_ms=800), Utterance("у меня есть собака", audio_ms=1000)]


@pytest.fixture
async def stt_server() -> AsyncIterator[YandexSttStandIn]:
    async with YandexSttStandIn() as server:
        server.behavior.api_key = API_KEY
        server.behavior.iam_token = IAM_TOKEN
        server.behavior.folder_id = FOLDER
        yield server


@pytest.fixture
def make_provider(
    tmp_path: Path, stt_server: YandexSttStandIn, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., YandexAsr]:
    for name in ("YANDEX_API_KEY", "YANDEX_IAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    made: list[int] = []

    def make(env: str = f"YANDEX_API_KEY={API_KEY}\n", language: str = "ru-RU", **options: Any) -> YandexAsr:
        made.append(1)
        folder = tmp_path / "robots" / f"stt_bot{len(made)}"
        folder.mkdir(parents=True)
        yandex = {"endpoint": stt_server.endpoint, "tls": False, "folder_id": FOLDER, **options}
        asr = {"provider": "yandex", "language": language, "providers": {"yandex": yandex}}
        config = {"llm": {"provider": "openai"}, "asr": asr}
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        (folder / ".env").write_text(env, encoding="utf-8")
        return YandexAsr(load_robot(folder, root_env=tmp_path / "none.env"))

    return make


def silence(ms: int, rate: int) -> bytes:
    return bytes(2 * rate * ms // 1000)


async def frames(pcm: bytes, rate: int, frame_ms: int = 20, pace_s: float = 0.0) -> AsyncIterator[bytes]:
    step = 2 * rate * frame_ms // 1000
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]
        if pace_s:
            await asyncio.sleep(pace_s)


async def collect(
    provider: YandexAsr,
    audio: AsyncIterator[bytes],
    rate: int,
    language: str = "",
    into: list[Transcript] | None = None,
) -> list[Transcript]:
    got = [] if into is None else into
    stream = provider.stream_recognize(audio, rate, language)
    async with contextlib.aclosing(stream) as transcripts:  # type: ignore[type-var]
        async for transcript in transcripts:
            got.append(transcript)
    return got


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_partials_and_normalized_finals_stream_at_both_rates(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr], rate: int
) -> None:
    stt_server.behavior.utterances = list(TWO_UTTERANCES)
    provider = make_provider()
    transcripts = await collect(provider, frames(silence(2000, rate), rate), rate)
    await provider.aclose()

    finals = [t for t in transcripts if t.is_final]
    assert [t.text for t in finals] == ["Алло добрый день.", "У меня есть собака."]
    assert {t.language for t in transcripts} == {"ru-RU"}
    first_final = transcripts.index(finals[0])
    early = [t.text for t in transcripts[:first_final]]
    assert len(early) >= 3 and all(not t.is_final for t in transcripts[:first_final])
    assert all("алло добрый день".startswith(text) for text in early)
    assert early[-1] == "алло добрый день"  # the raw final, yielded at once as a partial
    assert not any(t.text == "" for t in transcripts)

    record = stt_server.recorded.streams[0]
    assert record.sample_rate == rate and record.audio_bytes == 2 * rate * 2
    assert record.half_closed and record.finished_ok and not record.client_cancelled
    options = record.options
    assert options is not None
    model = options.recognition_model
    assert model.model == "general"
    assert model.audio_format.raw_audio.audio_encoding == stt_pb2.RawAudio.LINEAR16_PCM
    assert model.audio_format.raw_audio.audio_channel_count == 1
    assert model.text_normalization.text_normalization == (
        stt_pb2.TextNormalizationOptions.TEXT_NORMALIZATION_ENABLED
    )
    assert list(model.language_restriction.language_code) == ["ru-RU"]
    assert model.audio_processing_type == stt_pb2.RecognitionModelOptions.REAL_TIME
    assert options.eou_classifier.default_classifier.type == stt_pb2.DefaultEouClassifier.DEFAULT
    assert provider.last_usage.audio_s == pytest.approx(2.0)
    assert provider.last_usage.server_received_ms == 2000
    assert provider.total_audio_s == pytest.approx(2.0)


async def test_auth_folder_and_request_metadata_are_sent(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    provider = make_provider(eou_sensitivity="high", max_pause_between_words_hint_ms=600, model="general:rc")
    await collect(provider, frames(silence(600, 8000), 8000), 8000, language="ru")
    await provider.aclose()
    record = stt_server.recorded.streams[0]
    assert record.metadata["authorization"] == f"Api-Key {API_KEY}"
    assert record.metadata["x-folder-id"] == FOLDER
    assert record.metadata["x-data-logging-enabled"] == "false"
    assert len(record.metadata["x-client-request-id"]) == 36
    assert record.options is not None
    eou = record.options.eou_classifier.default_classifier
    assert eou.type == stt_pb2.DefaultEouClassifier.HIGH and eou.max_pause_between_words_hint_ms == 600
    assert record.options.recognition_model.model == "general:rc"
    assert list(record.options.recognition_model.language_restriction.language_code) == ["ru-RU"]


async def test_iam_token_is_sent_as_bearer_without_a_folder(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    stt_server.behavior.folder_id = None
    provider = make_provider(env=f"YANDEX_IAM_TOKEN={IAM_TOKEN}\n", folder_id="")
    transcripts = await collect(provider, frames(silence(1300, 16000), 16000), 16000)
    await provider.aclose()
    assert [t.text for t in transcripts if t.is_final] == ["Здравствуйте у меня есть собака."]
    record = stt_server.recorded.streams[0]
    assert record.metadata["authorization"] == f"Bearer {IAM_TOKEN}"
    assert "x-folder-id" not in record.metadata


async def test_big_chunks_are_split_and_the_last_utterance_ends_at_half_close(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    stt_server.behavior.utterances = [Utterance("сколько это стоит", audio_ms=5000)]
    provider = make_provider()

    async def one_segment() -> AsyncIterator[bytes]:
        yield silence(2000, 8000)  # what vp_asr.session.recognize sends: the whole segment at once

    transcripts = await collect(provider, one_segment(), 8000)
    await provider.aclose()
    assert [t.text for t in transcripts if t.is_final] == ["Сколько это стоит."]
    record = stt_server.recorded.streams[0]
    assert record.audio_chunks == 10 and record.audio_bytes == 32000  # 200 ms messages


async def test_finals_without_refinement_or_normalization_are_released(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    stt_server.behavior.utterances = list(TWO_UTTERANCES)
    stt_server.behavior.send_refinements = False  # the raw finals go out at eou_update
    provider = make_provider()
    transcripts = await collect(provider, frames(silence(2000, 8000), 8000), 8000)
    assert [t.text for t in transcripts if t.is_final] == ["алло добрый день", "у меня есть собака"]

    stt_server.behavior.send_refinements = True
    raw = make_provider(text_normalization=False)
    transcripts = await collect(raw, frames(silence(2000, 8000), 8000), 8000)
    assert [t.text for t in transcripts if t.is_final] == ["алло добрый день", "у меня есть собака"]
    options = stt_server.recorded.streams[1].options
    assert options is not None
    assert options.recognition_model.text_normalization.text_normalization == (
        stt_pb2.TextNormalizationOptions.TEXT_NORMALIZATION_DISABLED
    )
    await provider.aclose()
    await raw.aclose()


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, 401, False),
        (grpc.StatusCode.PERMISSION_DENIED, 403, False),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, True),
        (grpc.StatusCode.INTERNAL, 500, True),
        (grpc.StatusCode.UNAVAILABLE, 503, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, True),
    ],
)
async def test_grpc_statuses_map_to_the_error_tree_without_the_key(
    stt_server: YandexSttStandIn,
    make_provider: Callable[..., YandexAsr],
    code: grpc.StatusCode,
    status: int,
    retryable: bool,
) -> None:
    stt_server.behavior.fail_code = code
    stt_server.behavior.fail_message = f"failed for api key {API_KEY}"
    provider = make_provider()
    with capture_logs() as logs, pytest.raises(ProviderStatusError) as err:
        await collect(provider, frames(silence(400, 8000), 8000), 8000)
    await provider.aclose()
    assert err.value.status == status and err.value.retryable is retryable
    assert code.name in str(err.value) and "failed for api key" in str(err.value)
    assert API_KEY not in str(err.value) and err.value.__cause__ is None
    assert any(e["event"] == "asr.yandex_failed" for e in logs)
    assert API_KEY not in repr(logs)


async def test_real_auth_and_folder_checks_give_401_and_403(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    wrong_key = make_provider(env="YANDEX_API_KEY=AQVN-not-the-right-key\n")
    with capture_logs() as logs, pytest.raises(ProviderStatusError) as unauthorized:
        await collect(wrong_key, frames(silence(400, 8000), 8000), 8000)
    assert unauthorized.value.status == 401 and not unauthorized.value.retryable
    assert "Unknown api key" in str(unauthorized.value)  # the stand-in quotes the key: masked
    assert "AQVN-not-the-right-key" not in str(unauthorized.value)
    assert "AQVN-not-the-right-key" not in repr(logs)

    wrong_folder = make_provider(folder_id="b1gsomeoneelse")
    with pytest.raises(ProviderStatusError) as forbidden:
        await collect(wrong_folder, frames(silence(400, 8000), 8000), 8000)
    assert forbidden.value.status == 403 and not forbidden.value.retryable
    await wrong_key.aclose()
    await wrong_folder.aclose()


async def test_closing_the_iterator_cancels_the_call_at_once(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    provider = make_provider()
    stream = provider.stream_recognize(frames(silence(10_000, 8000), 8000, pace_s=0.02), 8000, "")
    async for transcript in stream:
        if transcript.text:
            break
    closed_at = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(stt_server.recorded.client_cancelled.wait(), 0.2)
    record = stt_server.recorded.streams[0]
    assert record.client_cancelled and not record.finished_ok
    assert record.cancelled_at - closed_at < 0.2
    assert 0 < record.audio_bytes < len(silence(10_000, 8000))
    assert 0 < provider.last_usage.audio_s < 2.0
    await provider.aclose()


async def test_cancelling_the_task_cancels_the_call_at_once(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    provider = make_provider()
    got: list[Transcript] = []
    task = asyncio.create_task(
        collect(provider, frames(silence(10_000, 16000), 16000, pace_s=0.02), 16000, into=got)
    )
    while not got:
        await asyncio.sleep(0.01)
    task.cancel()
    cancelled_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(stt_server.recorded.client_cancelled.wait(), 0.2)
    assert stt_server.recorded.streams[0].cancelled_at - cancelled_at < 0.2
    await provider.aclose()


async def test_no_result_after_audio_starts_is_a_timeout(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    stt_server.behavior.stall = True  # a status_code, then nothing
    provider = make_provider(first_result_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match=r"no result within 0\.3s") as err:
        await collect(provider, frames(silence(5000, 8000), 8000, pace_s=0.02), 8000)
    assert err.value.retryable and time.monotonic() - started < 1.5
    await asyncio.wait_for(stt_server.recorded.client_cancelled.wait(), 0.2)
    await provider.aclose()


async def test_silence_after_the_audio_ended_is_a_timeout(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    stt_server.behavior.stall = True
    provider = make_provider(first_result_timeout_s=0, finish_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match="after the audio ended"):
        await collect(provider, frames(silence(400, 8000), 8000), 8000)
    assert time.monotonic() - started < 1.5
    assert stt_server.recorded.streams[0].half_closed
    await asyncio.wait_for(stt_server.recorded.client_cancelled.wait(), 0.2)
    await provider.aclose()


async def test_abort_mid_stream_is_a_clear_retryable_error_after_the_partials(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    stt_server.behavior.abort_after = 3
    provider = make_provider()
    got: list[Transcript] = []
    with pytest.raises(ProviderStatusError, match="INTERNAL") as err:
        await collect(provider, frames(silence(2000, 8000), 8000), 8000, into=got)
    assert err.value.status == 500 and err.value.retryable
    assert [t.text for t in got] == ["здравствуйте", "здравствуйте"]  # partials before the abort
    await provider.aclose()


async def test_undecodable_message_and_early_end_are_protocol_errors(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    provider = make_provider()
    stt_server.behavior.garbage_after = 2
    with pytest.raises(ProviderProtocolError, match="undecodable"):
        await collect(provider, frames(silence(2000, 8000), 8000), 8000)
    stt_server.behavior.garbage_after = None
    stt_server.behavior.end_after = 3
    with pytest.raises(ProviderProtocolError, match="before the audio ended"):
        await collect(provider, frames(silence(5000, 8000), 8000, pace_s=0.005), 8000)
    await provider.aclose()


async def test_unsupported_sample_rate_fails_before_connecting(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    provider = make_provider()
    with pytest.raises(ProviderError, match="unsupported sample rate 44100") as err:
        await collect(provider, frames(silence(400, 44100), 44100), 44100)
    assert not err.value.retryable
    assert stt_server.recorded.streams == []
    await provider.aclose()


async def test_a_failing_audio_source_cancels_the_call_and_surfaces(
    stt_server: YandexSttStandIn, make_provider: Callable[..., YandexAsr]
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield silence(100, 8000)
        await asyncio.sleep(0.05)
        raise RuntimeError("audio source broke")

    provider = make_provider()
    with pytest.raises(RuntimeError, match="audio source broke"):
        await collect(provider, broken(), 8000)
    await asyncio.wait_for(stt_server.recorded.client_cancelled.wait(), 0.2)
    await provider.aclose()


async def test_connection_refused_is_a_connection_error(make_provider: Callable[..., YandexAsr]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    provider = make_provider(endpoint=f"127.0.0.1:{dead_port}")
    with pytest.raises(ProviderConnectionError) as err:
        await collect(provider, frames(silence(400, 8000), 8000), 8000)
    assert err.value.retryable
    await provider.aclose()


async def test_missing_secret_and_bad_options_fail_at_construction(
    make_provider: Callable[..., YandexAsr],
) -> None:
    with pytest.raises(ProviderError, match="YANDEX_API_KEY is not set"):
        make_provider(env="")
    with pytest.raises(ProviderError, match="YANDEX_IAM_TOKEN is not set"):
        make_provider(auth="iam")
    with pytest.raises(ProviderError, match="voice"):
        make_provider(voice="alena")


def test_language_tags() -> None:
    assert yandex_language("ru") == "ru-RU"
    assert yandex_language("kk_KZ") == "kk-KZ"
    assert yandex_language("auto") == "" and yandex_language("") == ""


def _update(text: str) -> stt_pb2.AlternativeUpdate:
    return stt_pb2.AlternativeUpdate(alternatives=[stt_pb2.Alternative(text=text)] if text else [])


def test_result_mapping_tolerates_odd_orders_and_unknown_events() -> None:
    results = _Results(normalized=True, language="ru-RU")
    cursors = stt_pb2.AudioCursors(final_index=5)

    def feed(**event: Any) -> list[tuple[str, bool]]:
        response = stt_pb2.StreamingResponse(audio_cursors=cursors, channel_tag="0", **event)
        return [(t.text, t.is_final) for t in results.feed(response)]

    assert feed(partial=_update("")) == []
    assert feed(final=_update("да")) == [("да", False)]  # held for its refinement
    # a refinement naming an index we never saw refines the oldest held final
    refined = stt_pb2.FinalRefinement(final_index=7, normalized_text=_update("Да."))
    assert feed(final_refinement=refined) == [("Да.", True)]
    assert feed(final=_update("нет")) == [("нет", False)]
    assert feed(eou_update=stt_pb2.EouUpdate(time_ms=900)) == [("нет", True)]  # released unrefined
    late = stt_pb2.FinalRefinement(final_index=5, normalized_text=_update("Нет."))
    assert feed(final_refinement=late) == []  # its final already went out
    assert feed(classifier_update=stt_pb2.RecognitionClassifierUpdate()) == []
    other_channel = stt_pb2.StreamingResponse(channel_tag="1", partial=_update("чужой канал"))
    assert results.feed(other_channel) == []
    assert results.flush() == []


async def test_injected_channel_factory_gets_no_retry_options_and_is_reused(
    stt_server: YandexSttStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("YANDEX_API_KEY", raising=False)
    folder = tmp_path / "robots" / "injected"
    folder.mkdir(parents=True)
    options = {"endpoint": "stt.example.invalid:443", "folder_id": FOLDER}
    config = {"llm": {"provider": "openai"}, "asr": {"providers": {"yandex": options}}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / ".env").write_text(f"YANDEX_API_KEY={API_KEY}\n", encoding="utf-8")
    made: list[tuple[str, list[tuple[str, Any]]]] = []

    def factory(endpoint: str, channel_options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        made.append((endpoint, list(channel_options)))
        return grpc.aio.insecure_channel(stt_server.endpoint, options=channel_options)

    provider = YandexAsr(load_robot(folder, root_env=tmp_path / "none.env"), channel_factory=factory)
    for _ in range(2):
        transcripts = await collect(provider, frames(silence(1300, 8000), 8000), 8000)
        assert [t.text for t in transcripts if t.is_final] == ["Здравствуйте у меня есть собака."]
    await provider.aclose()
    assert made == [("stt.example.invalid:443", [("grpc.enable_retries", 0)])]
    assert len(stt_server.recorded.streams) == 2
