"""The Zvukogram TTS provider against a real HTTP stand-in of its API (short, long and file flows)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from structlog.testing import capture_logs

from tests.stand_ins.zvukogram_server import EMAIL, TOKEN, ZvukogramStandIn, expected_samples
from voiceplatform.config import RobotConfig
from voiceplatform.config.robot import RobotSettings
from voiceplatform.providers import (
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from vp_tts.providers.zvukogram import ZvukogramTts

TEXT = "Добрый день! Ваш заказ уже в пути."
LONG_TEXT = " ".join(["Это длинный текст, который уходит в асинхронную задачу синтеза."] * 6)
MakeProvider = Callable[..., ZvukogramTts]


@pytest.fixture
async def server() -> AsyncIterator[ZvukogramStandIn]:
    async with ZvukogramStandIn() as stand_in:
        yield stand_in


@pytest.fixture
async def make_provider(tmp_path: Path, server: ZvukogramStandIn) -> AsyncIterator[MakeProvider]:
    made: list[ZvukogramTts] = []

    def make(
        env: dict[str, str] | None = None, robot_voice: str = "Алена", robot_rate: int = 16000, **options: Any
    ) -> ZvukogramTts:
        """``robot_*`` are the robot-wide tts settings; keyword ``options`` are tts.providers.zvukogram."""
        opts = {"base_url": server.base_url, "poll_interval_s": 0.02, **options}
        tts = {"provider": "zvukogram", "voice": robot_voice, "sample_rate": robot_rate}
        robot = RobotConfig(
            name="zvukogram_bot",
            path=tmp_path,
            settings=RobotSettings.model_validate({"tts": {**tts, "providers": {"zvukogram": opts}}}),
            system_prompt="",
            prompts={},
            env={"TTS_TOKEN": TOKEN, "TTS_EMAIL": EMAIL} if env is None else env,
        )
        provider = ZvukogramTts(robot)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def collect(provider: ZvukogramTts, text: str = TEXT, voice: str = "Алена") -> bytes:
    pcm = b""
    async with contextlib.aclosing(provider.stream_synthesize(text, voice)) as stream:
        async for chunk in stream:
            assert chunk and len(chunk) % 2 == 0
            pcm += chunk
    return pcm


async def test_short_text_is_synthesized_directly(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    provider = make_provider(speed=1.1, pitch=-2, emotion="good")
    with capture_logs() as logs:
        pcm = await collect(provider, voice="Владимир")
    assert len(pcm) == expected_samples(TEXT, 16000) * 2 and provider.sample_rate == 16000
    assert server.recorded.methods() == ["api/text"]
    call = server.recorded.calls[0]
    assert dict(parse_qsl(call.query)) == {"r": "api/text"}
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.fields == {
        "token": TOKEN,
        "email": EMAIL,
        "voice": "Владимир",
        "text": TEXT,
        "format": "wav",
        "sample_rate": "16000",
        "speed": "1.1",
        "pitch": "-2",
        "emotion": "good",
    }
    assert len(server.recorded.downloads) == 1 and server.recorded.downloads[0].finished
    assert provider.usage.requests == 1 and provider.usage.characters == len(TEXT)
    assert provider.usage.cost == pytest.approx(0.042) and provider.usage.balance == pytest.approx(11563.364)
    assert provider.usage.audio_seconds == pytest.approx(len(TEXT) * 0.05, abs=0.001)
    # the credentials travel in the form body only: never in a URL, never in a log line
    assert all(TOKEN not in c.query and EMAIL not in c.query for c in server.recorded.calls)
    assert TOKEN not in repr(logs) and EMAIL not in repr(logs)
    assert any(e["event"] == "tts.zvukogram_synthesized" for e in logs)


async def test_long_text_polls_the_job_to_completion(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    assert len(LONG_TEXT) > 300
    server.behavior.polls_until_ready = 3
    server.behavior.status_as_string = True  # "status": "0" / "1", as some answers come
    provider = make_provider()
    pcm = await collect(provider, text=LONG_TEXT)
    assert len(pcm) == expected_samples(LONG_TEXT, 16000) * 2
    assert server.recorded.methods() == ["api/longtext", "api/result", "api/result", "api/result"]
    job_id = server.recorded.calls[0].answer["id"]  # type: ignore[index]
    for poll in server.recorded.calls[1:]:
        assert poll.fields == {"token": TOKEN, "email": EMAIL, "id": job_id}
    assert provider.usage.requests == 1 and provider.usage.characters == len(LONG_TEXT)
    assert provider.usage.cost == pytest.approx(0.042)  # from the final api/result answer


async def test_short_text_limit_is_an_option(server: ZvukogramStandIn, make_provider: MakeProvider) -> None:
    server.behavior.polls_until_ready = 1
    await collect(make_provider(short_text_limit=10))
    assert server.recorded.methods() == ["api/longtext", "api/result"]


async def test_audio_at_another_rate_or_stereo_is_converted_to_the_declared_rate(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.file_rate = 24000  # a server that ignores sample_rate
    server.behavior.file_channels = 2
    provider = make_provider(robot_rate=8000)
    pcm = await collect(provider)
    assert provider.sample_rate == 8000
    assert abs(len(pcm) // 2 - expected_samples(TEXT, 8000)) <= 1


async def test_mp3_is_decoded(server: ZvukogramStandIn, make_provider: MakeProvider) -> None:
    provider = make_provider(format="mp3", sample_rate=22050)
    pcm = await collect(provider)
    assert server.recorded.calls[0].fields["format"] == "mp3"
    assert provider.sample_rate == 22050
    assert len(pcm) // 2 == pytest.approx(expected_samples(TEXT, 22050), rel=0.02)


@pytest.mark.parametrize(
    ("status", "retryable"), [(401, False), (403, False), (429, True), (500, True), (503, True)]
)
async def test_http_errors_map_to_the_error_tree_without_secrets(
    server: ZvukogramStandIn, make_provider: MakeProvider, status: int, retryable: bool
) -> None:
    server.behavior.fail_status = status
    server.behavior.fail_message = f"bad credentials {TOKEN} for {EMAIL}"
    server.behavior.retry_after = "7"
    with capture_logs() as logs, pytest.raises(ProviderStatusError) as err:
        await collect(make_provider())
    assert err.value.status == status and err.value.retryable is retryable
    assert "bad credentials" in str(err.value) and "retry after 7" in str(err.value)
    for secret in (TOKEN, EMAIL):
        assert secret not in str(err.value) and secret not in repr(logs)


async def test_api_errors(server: ZvukogramStandIn, make_provider: MakeProvider) -> None:
    wrong = make_provider(env={"TTS_TOKEN": "zvk-wrong-token-0000", "TTS_EMAIL": EMAIL})
    with pytest.raises(ProviderError, match="Неверный токен") as refused:
        await collect(wrong)
    assert not refused.value.retryable and "zvk-wrong-token" not in str(refused.value)
    assert wrong.usage.characters == 0
    server.behavior.job_fails = True
    server.behavior.polls_until_ready = 2
    with pytest.raises(ProviderError, match="Ошибка синтеза") as failed:
        await collect(make_provider(), text=LONG_TEXT)
    assert failed.value.retryable  # an accepted job that failed may work next time
    server.behavior.short_limit = 10  # the real API refuses long text on api/text
    with pytest.raises(ProviderError, match="longtext"):
        await collect(make_provider(short_text_limit=300))


async def test_missing_credentials_and_bad_options_fail_at_build(make_provider: MakeProvider) -> None:
    with pytest.raises(ProviderError, match="TTS_TOKEN") as err:
        make_provider(env={"TTS_TOKEN": TOKEN})
    assert not err.value.retryable
    with pytest.raises(ProviderError, match="format"):
        make_provider(format="flac")


@pytest.mark.parametrize(
    ("knobs", "match"),
    [
        ({"malformed_json": True}, "not JSON"),
        ({"file_truncated": True}, "truncated"),
        ({"file_cut_after": 1, "file_chunk_bytes": 256}, "truncated"),
        ({"file_format": "html"}, "neither WAV nor MP3"),
        ({"file_format": "badmp3"}, "MP3"),
    ],
)
async def test_bad_answers_are_protocol_errors(
    server: ZvukogramStandIn, make_provider: MakeProvider, knobs: dict[str, Any], match: str
) -> None:
    for knob, value in knobs.items():
        setattr(server.behavior, knob, value)
    with pytest.raises(ProviderProtocolError, match=match) as err:
        await collect(make_provider())
    assert err.value.retryable


async def test_missing_file_is_a_status_error(server: ZvukogramStandIn, make_provider: MakeProvider) -> None:
    server.behavior.file_status = 404
    with pytest.raises(ProviderStatusError) as err:
        await collect(make_provider())
    assert err.value.status == 404 and not err.value.retryable


async def test_stalls_and_slow_jobs_are_timeouts(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.stall_api = True
    with pytest.raises(ProviderTimeoutError, match="stalled"):
        await collect(make_provider(request_timeout_s=0.3))
    await asyncio.wait_for(server.recorded.client_closed.wait(), 2.0)
    server.behavior.stall_api = False
    server.behavior.polls_until_ready = 10_000
    with pytest.raises(ProviderTimeoutError, match="job not ready"):
        await collect(make_provider(job_timeout_s=0.2), text=LONG_TEXT)
    server.behavior.polls_until_ready = 1
    server.behavior.file_chunk_bytes = 512
    server.behavior.file_chunk_delay_s = 0.05
    with pytest.raises(ProviderTimeoutError, match="download too slow"):
        await collect(make_provider(download_timeout_s=0.3))


async def test_connection_refused(make_provider: MakeProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with pytest.raises(ProviderConnectionError):
        await collect(make_provider(base_url=f"http://127.0.0.1:{dead_port}/index.php"))


async def _consume(provider: ZvukogramTts, text: str) -> None:
    async with contextlib.aclosing(provider.stream_synthesize(text, "Алена")) as stream:
        async for _ in stream:
            pass


async def test_cancelling_while_polling_stops_the_polls(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.polls_until_ready = 10_000
    task = asyncio.create_task(_consume(make_provider(poll_interval_s=0.02), LONG_TEXT))
    while len(server.recorded.calls) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    polls = len(server.recorded.calls)
    await asyncio.sleep(0.2)
    assert len(server.recorded.calls) == polls


async def test_cancelling_during_the_download_closes_the_connection(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    server.behavior.file_chunk_bytes = 512
    server.behavior.file_chunk_delay_s = 0.05
    task = asyncio.create_task(_consume(make_provider(), TEXT))
    while not server.recorded.downloads or server.recorded.downloads[0].chunks_sent < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.recorded.client_closed.wait(), 1.0)
    download = server.recorded.downloads[0]
    assert download.client_closed_early and not download.finished
    assert download.chunks_sent < download.chunks_total


async def test_audio_comes_in_100_ms_pieces_and_closing_after_the_first_is_clean(
    server: ZvukogramStandIn, make_provider: MakeProvider
) -> None:
    provider = make_provider()
    stream = provider.stream_synthesize(LONG_TEXT[:250], "Алена")
    first = await anext(stream)
    await stream.aclose()
    assert len(first) == provider.sample_rate // 10 * 2  # not the whole file in one piece
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert server.recorded.downloads[0].finished  # the file was fetched whole before playing
