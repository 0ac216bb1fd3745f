"""The LLM provider contract, the same assertions for every LLM provider (one harness each in conftest)."""

from __future__ import annotations

import pytest

from tests.contract.conftest import (
    LLM_HARNESSES,
    LlmHarness,
    check_closes_on_iterator_close,
    check_secrets_masked,
    check_status,
    check_streams,
    providers,
)
from voiceplatform.providers import LlmChunk

ALL = providers(list(LLM_HARNESSES))


def text(chunk: LlmChunk) -> str:
    return chunk.text


@pytest.mark.parametrize("llm_harness", ALL, indirect=True)
async def test_streams_more_than_one_delta(llm_harness: LlmHarness) -> None:
    await check_streams(llm_harness, text)


@pytest.mark.parametrize("llm_harness", ALL, indirect=True)
async def test_closing_the_iterator_closes_the_vendor_stream_at_once(llm_harness: LlmHarness) -> None:
    await check_closes_on_iterator_close(llm_harness, text)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("llm_harness", ALL, indirect=True)
async def test_auth_errors_are_not_retryable(llm_harness: LlmHarness, status: int) -> None:
    await check_status(llm_harness, status, retryable=False)


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("llm_harness", ALL, indirect=True)
async def test_rate_limits_and_server_errors_are_retryable(llm_harness: LlmHarness, status: int) -> None:
    await check_status(llm_harness, status, retryable=True)


@pytest.mark.parametrize("status", [401, 429, 503])
@pytest.mark.parametrize("llm_harness", ALL, indirect=True)
async def test_the_secret_never_reaches_errors_or_logs(
    llm_harness: LlmHarness, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    await check_secrets_masked(llm_harness, status, caplog)
