"""The TTS provider contract, the same assertions for every TTS provider (one harness each in conftest)."""

from __future__ import annotations

import pytest

from tests.contract.conftest import (
    TTS_HARNESSES,
    TtsHarness,
    check_closes_on_iterator_close,
    check_secrets_masked,
    check_status,
    check_streams,
    providers,
)

ALL = providers(list(TTS_HARNESSES))
# Zvukogram has no streaming synthesis: the provider downloads the whole file, then yields it in
# 100 ms pieces, so after the first piece there is no open vendor stream left to close. Cancelling
# DURING the download does close it (tests/tts/test_zvukogram_provider.py::
# test_cancelling_during_the_download_closes_the_connection).
CLOSABLE = providers(
    list(TTS_HARNESSES),
    xfail={"zvukogram": "whole file fetched before the first chunk: nothing is open to close mid-stream"},
)


def audio(chunk: bytes) -> bytes:
    return chunk


@pytest.mark.parametrize("tts_harness", ALL, indirect=True)
async def test_streams_more_than_one_audio_chunk(tts_harness: TtsHarness) -> None:
    await check_streams(tts_harness, audio)


@pytest.mark.parametrize("tts_harness", CLOSABLE, indirect=True)
async def test_closing_the_iterator_closes_the_vendor_stream_at_once(tts_harness: TtsHarness) -> None:
    await check_closes_on_iterator_close(tts_harness, audio)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("tts_harness", ALL, indirect=True)
async def test_auth_errors_are_not_retryable(tts_harness: TtsHarness, status: int) -> None:
    await check_status(tts_harness, status, retryable=False)


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("tts_harness", ALL, indirect=True)
async def test_rate_limits_and_server_errors_are_retryable(tts_harness: TtsHarness, status: int) -> None:
    await check_status(tts_harness, status, retryable=True)


@pytest.mark.parametrize("status", [401, 429, 503])
@pytest.mark.parametrize("tts_harness", ALL, indirect=True)
async def test_the_secret_never_reaches_errors_or_logs(
    tts_harness: TtsHarness, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    await check_secrets_masked(tts_harness, status, caplog)
