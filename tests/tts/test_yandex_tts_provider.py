"""The Yandex SpeechKit TTS provider (v3 REST NDJSON and v1 REST) against a real HTTP stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.stand_ins.yandex_tts_server import (
    API_KEY,
    IAM_TOKEN,
    YandexTtsStandIn,
    expected_samples,
    wav_header,
)
from voiceplatform.config import RobotConfig
from voiceplatform.config.robot import RobotSettings
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from vp_tts.providers.yandex import PcmAssembler, YandexTts

TEXT = "Добрый день! Чем могу помочь?"
LONG_TEXT = " ".join(["Это длинное предложение для проверки потоковой передачи."] * 4)
FOLDER = "b1g-folder-test"
MakeProvider = Callable[..., YandexTts]


@pytest.fixture
async def server() -> AsyncIterator[YandexTtsStandIn]:
    async with YandexTtsStandIn() as stand_in:
        yield stand_in


@pytest.fixture
async def make_provider(tmp_path: Path, server: YandexTtsStandIn) -> AsyncIterator[MakeProvider]:
    made: list[YandexTts] = []

    def make(
        env: dict[str, str] | None = None, robot_voice: str = "jane", robot_rate: int = 16000, **options: Any
    ) -> YandexTts:
        """``robot_*`` are the robot-wide tts settings; keyword ``options`` are tts.providers.yandex."""
        opts = {"base_url": server.base_url, **options}
        tts = {
            "provider": "yandex",
            "voice": robot_voice,
            "sample_rate": robot_rate,
            "providers": {"yandex": opts},
        }
        robot = RobotConfig(
            name="yandex_bot",
            path=tmp_path,
            settings=RobotSettings.model_validate({"tts": tts}),
            system_prompt="",
            prompts={},
            env={"YANDEX_API_KEY": API_KEY} if env is None else env,
        )
        provider = YandexTts(robot)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def collect(provider: YandexTts, text: str = TEXT, voice: str = "jane") -> list[bytes]:
    chunks: list[bytes] = []
    async with contextlib.aclosing(provider.stream_synthesize(text, voice)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks


async def test_v3_streams_pcm_of_the_right_length_with_the_fields_the_api_expects(
    server: YandexTtsStandIn, make_provider: MakeProvider
) -> None:
    provider = make_provider(folder_id=FOLDER, role="good", speed=1.2)
    chunks = await collect(provider)
    assert provider.sample_rate == 16000
    assert len(chunks) > 1 and all(len(c) % 2 == 0 for c in chunks)
    assert len(b"".join(chunks)) == expected_samples(TEXT, 16000) * 2
    request = server.recorded.requests[0]
    assert request.api == "v3"
    assert request.body == {
        "text": TEXT,
        "hints": [{"voice": "jane"}, {"role": "good"}, {"speed": 1.2}],
        "outputAudioSpec": {"rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16000"}},
    }
    assert request.headers["authorization"] == f"Api-Key {API_KEY}"
    assert request.headers["x-folder-id"] == FOLDER
    assert request.headers["x-client-request-id"]
    assert server.recorded.streams[0].finished
    assert provider.usage.requests == 1 and provider.usage.characters == len(TEXT)
    assert provider.usage.audio_seconds == pytest.approx(len(TEXT) * 0.05, abs=0.001)


async def test_v3_yields_audio_before_the_answer_is_complete(
    server: YandexTtsStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.chunk_delay_s = 0.02
    server.behavior.chunk_ms = 500
    provider = make_provider(robot_rate=8000)
    sent_when_first_chunk_arrived = -1
    total = 0
    async with contextlib.aclosing(provider.stream_synthesize(LONG_TEXT, "alena")) as stream:
        async for chunk in stream:
            if sent_when_first_chunk_arrived < 0:
                sent_when_first_chunk_arrived = server.recorded.streams[0].chunks_sent
            total += len(chunk)
    assert total == expected_samples(LONG_TEXT, 8000) * 2
    assert 0 < sent_when_first_chunk_arrived < server.recorded.streams[0].chunks_total


async def test_v1_form_fields_with_iam_token_and_folder(
    server: YandexTtsStandIn, make_provider: MakeProvider
) -> None:
    provider = make_provider(
        env={"YANDEX_IAM_TOKEN": IAM_TOKEN, "YANDEX_FOLDER_ID": FOLDER},
        api="v1",
        robot_rate=8000,
        emotion="evil",
        speed=0.9,
    )
    pcm = b"".join(await collect(provider, voice="filipp"))
    assert len(pcm) == expected_samples(TEXT, 8000) * 2 and provider.sample_rate == 8000
    request = server.recorded.requests[0]
    assert request.api == "v1"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == f"Bearer {IAM_TOKEN}"
    assert request.body == {
        "text": TEXT,
        "lang": "ru-RU",
        "voice": "filipp",
        "format": "lpcm",
        "sampleRateHertz": "8000",
        "emotion": "evil",
        "speed": "0.9",
        "folderId": FOLDER,
    }


async def test_v1_with_an_api_key_sends_no_folder_and_picks_a_rate_v1_offers(
    server: YandexTtsStandIn, make_provider: MakeProvider
) -> None:
    provider = make_provider(
        env={"YANDEX_API_KEY": API_KEY, "YANDEX_FOLDER_ID": FOLDER}, api="v1", robot_rate=22050
    )
    assert provider.sample_rate == 48000  # v1 has 8000/16000/48000: the nearest one at or above
    pcm = b"".join(await collect(provider))
    assert len(pcm) == expected_samples(TEXT, 48000) * 2
    assert "folderId" not in server.recorded.requests[0].body
    with pytest.raises(ProviderError, match="sample_rate") as err:
        make_provider(api="v1", sample_rate=22050)
    assert err.value.retryable is False


async def test_voice_resolution(server: YandexTtsStandIn, make_provider: MakeProvider) -> None:
    festival_robot = make_provider(robot_voice="voice_msu_ru_nsh_clunits")
    await collect(festival_robot, voice="voice_msu_ru_nsh_clunits")  # another engine's voice name
    await collect(festival_robot, voice="zahar")
    pinned = make_provider(robot_voice="jane", voice="filipp")
    await collect(pinned, voice="jane")
    voices = [r.body["hints"][0]["voice"] for r in server.recorded.requests]
    assert voices == ["alena", "zahar", "filipp"]


async def test_wav_header_is_stripped(server: YandexTtsStandIn, make_provider: MakeProvider) -> None:
    server.behavior.wav_container = True
    pcm = b"".join(await collect(make_provider(robot_rate=22050)))
    assert len(pcm) == expected_samples(TEXT, 22050) * 2
    assert b"RIFF" not in pcm[:64]


def test_pcm_assembler_handles_split_headers_and_samples_and_rejects_bad_audio() -> None:
    body = bytes(range(1, 101))
    whole = wav_header(16000, len(body)) + body
    assembler = PcmAssembler("yandex", 16000)
    out = b"".join(assembler.feed(whole[i : i + 3]) for i in range(0, len(whole), 3)) + assembler.finish()
    assert out == body and assembler.total_bytes == 100
    wrong_rate = PcmAssembler("yandex", 8000)
    with pytest.raises(ProviderProtocolError, match="22050 Hz"):
        wrong_rate.feed(wav_header(22050, 10) + b"\x00" * 10)
    odd = PcmAssembler("yandex", 16000)
    assert odd.feed(b"\x01\x02\x03") == b"\x01\x02"
    with pytest.raises(ProviderProtocolError, match="odd"):
        odd.finish()


@pytest.mark.parametrize("api", ["v3", "v1"])
@pytest.mark.parametrize(
    ("status", "retryable"), [(401, False), (403, False), (429, True), (500, True), (503, True)]
)
async def test_http_errors_map_to_the_error_tree_without_secrets(
    server: YandexTtsStandIn, make_provider: MakeProvider, api: str, status: int, retryable: bool
) -> None:
    server.behavior.fail_status = status
    server.behavior.fail_message = f"quota or key problem, key {API_KEY}"
    server.behavior.retry_after = "3"
    provider = make_provider(api=api)
    with capture_logs() as logs, pytest.raises(ProviderStatusError) as err:
        await collect(provider)
    assert err.value.status == status and err.value.retryable is retryable
    assert "quota or key problem" in str(err.value)
    assert API_KEY not in str(err.value) and API_KEY not in repr(logs)
    assert any(e["event"] == "tts.yandex_rejected" for e in logs)
    if status == 429:
        assert "retry after 3" in str(err.value)
    assert provider.usage.characters == 0  # nothing billed for a refused request


async def test_real_auth_and_request_checks(server: YandexTtsStandIn, make_provider: MakeProvider) -> None:
    wrong = make_provider(env={"YANDEX_API_KEY": "AQVN-wrong-key-0000"})
    with pytest.raises(ProviderStatusError) as err:
        await collect(wrong)
    assert err.value.status == 401 and not err.value.retryable and "wrong-key" not in str(err.value)
    no_folder = make_provider(env={"YANDEX_IAM_TOKEN": IAM_TOKEN})
    with pytest.raises(ProviderStatusError) as err:
        await collect(no_folder)
    assert err.value.status == 400 and "folder" in str(err.value)
    unknown_voice = make_provider(voice="nobody")
    with pytest.raises(ProviderStatusError) as err:
        await collect(unknown_voice)
    assert err.value.status == 400 and not err.value.retryable
    with pytest.raises(ProviderError, match="5000") as too_long:
        await collect(make_provider(), text="а" * 5001)
    assert not too_long.value.retryable and len(server.recorded.requests) == 3


async def test_missing_credentials_and_bad_options_fail_at_build(make_provider: MakeProvider) -> None:
    with pytest.raises(ProviderError, match="YANDEX_API_KEY") as err:
        make_provider(env={})
    assert not err.value.retryable
    with pytest.raises(ProviderError, match="folder") as bad:
        make_provider(folder="typo")
    assert not bad.value.retryable


@pytest.mark.parametrize(
    ("knob", "value", "match"),
    [
        ("malformed_after", 2, "malformed JSON"),
        ("bad_base64_after", 1, "base64"),
        ("odd_byte", True, "odd number"),
        ("truncate_after", 2, "truncated"),
    ],
)
async def test_bad_v3_streams_are_protocol_errors(
    server: YandexTtsStandIn, make_provider: MakeProvider, knob: str, value: Any, match: str
) -> None:
    setattr(server.behavior, knob, value)
    with pytest.raises(ProviderProtocolError, match=match) as err:
        await collect(make_provider(), text=LONG_TEXT)
    assert err.value.retryable


@pytest.mark.parametrize(
    ("knob", "value", "match"), [("odd_byte", True, "odd number"), ("truncate_after", 2, "truncated")]
)
async def test_bad_v1_bodies_are_protocol_errors(
    server: YandexTtsStandIn, make_provider: MakeProvider, knob: str, value: Any, match: str
) -> None:
    setattr(server.behavior, knob, value)
    with pytest.raises(ProviderProtocolError, match=match):
        await collect(make_provider(api="v1", robot_rate=8000), text=LONG_TEXT)


async def test_error_line_inside_the_stream_is_a_status_error(
    server: YandexTtsStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.error_in_stream_after = 1
    server.behavior.fail_message = f"internal error near {API_KEY}"
    with pytest.raises(ProviderStatusError) as err:
        await collect(make_provider(), text=LONG_TEXT)
    assert err.value.status == 500 and err.value.retryable and API_KEY not in str(err.value)


@pytest.mark.parametrize("api", ["v3", "v1"])
async def test_stall_and_slow_trickle_are_timeouts(
    server: YandexTtsStandIn, make_provider: MakeProvider, api: str
) -> None:
    server.behavior.stall_after = 1
    stalled = make_provider(api=api, read_timeout_s=0.3)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderTimeoutError, match="stalled"):
        await collect(stalled, text=LONG_TEXT)
    assert asyncio.get_running_loop().time() - started < 2.0
    await asyncio.wait_for(server.recorded.client_closed.wait(), 2.0)  # the stand-in saw us leave
    server.behavior.stall_after = None
    server.behavior.chunk_delay_s = 0.1
    slow = make_provider(api=api, read_timeout_s=1.0, total_timeout_s=0.35)
    with pytest.raises(ProviderTimeoutError, match="too slow"):
        await collect(slow, text=LONG_TEXT)


async def test_connection_refused(make_provider: MakeProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with pytest.raises(ProviderConnectionError):
        await collect(make_provider(base_url=f"http://127.0.0.1:{dead_port}"))


@pytest.mark.parametrize("api", ["v3", "v1"])
async def test_closing_the_stream_closes_the_connection_at_once(
    server: YandexTtsStandIn, make_provider: MakeProvider, api: str
) -> None:
    server.behavior.chunk_delay_s = 0.05
    provider = make_provider(api=api, robot_rate=8000)
    stream = provider.stream_synthesize(LONG_TEXT, "alena")
    first = await anext(stream)
    assert first
    closed_at = asyncio.get_running_loop().time()
    await stream.aclose()
    await asyncio.wait_for(server.recorded.client_closed.wait(), 1.0)
    record = server.recorded.streams[0]
    assert record.client_closed_early and not record.finished
    assert record.chunks_sent < record.chunks_total
    assert record.closed_at - closed_at < 0.5
    assert provider.usage.characters == len(LONG_TEXT)  # billed even though it was cut short


async def test_cancelling_the_consumer_task_closes_the_connection(
    server: YandexTtsStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.chunk_delay_s = 0.05
    provider = make_provider()
    got_audio = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(provider.stream_synthesize(LONG_TEXT, "alena")) as stream:
            async for _ in stream:
                got_audio.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_audio.wait(), 2.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.recorded.client_closed.wait(), 1.0)
    assert not server.recorded.streams[0].finished
