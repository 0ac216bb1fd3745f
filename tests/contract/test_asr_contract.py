"""The ASR provider contract, the same assertions for every ASR provider (one harness each in conftest)."""

from __future__ import annotations

import pytest

from tests.contract.conftest import (
    ASR_HARNESSES,
    AsrHarness,
    check_closes_on_iterator_close,
    check_secrets_masked,
    check_status,
    check_streams,
    providers,
)
from voiceplatform.providers import Transcript

ALL = providers(list(ASR_HARNESSES))


def text(transcript: Transcript) -> str:
    return transcript.text


@pytest.mark.parametrize("asr_harness", ALL, indirect=True)
async def test_streams_more_than_one_transcript(asr_harness: AsrHarness) -> None:
    await check_streams(asr_harness, text)


@pytest.mark.parametrize("asr_harness", ALL, indirect=True)
async def test_closing_the_iterator_closes_the_vendor_stream_at_once(asr_harness: AsrHarness) -> None:
    await check_closes_on_iterator_close(asr_harness, text)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("asr_harness", ALL, indirect=True)
async def test_auth_errors_are_not_retryable(asr_harness: AsrHarness, status: int) -> None:
    await check_status(asr_harness, status, retryable=False)


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("asr_harness", ALL, indirect=True)
async def test_rate_limits_and_server_errors_are_retryable(asr_harness: AsrHarness, status: int) -> None:
    await check_status(asr_harness, status, retryable=True)


@pytest.mark.parametrize("status", [401, 429, 503])
@pytest.mark.parametrize("asr_harness", ALL, indirect=True)
async def test_the_secret_never_reaches_errors_or_logs(
    asr_harness: AsrHarness, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    await check_secrets_masked(asr_harness, status, caplog)
