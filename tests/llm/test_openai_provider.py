"""The OpenAI-compatible provider against a real HTTP stand-in speaking the SSE protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.llm.conftest import API_KEY
from tests.stand_ins.openai_server import OpenAIStandIn
from voiceplatform.config import load_robot
from voiceplatform.providers import (
    LlmChunk,
    LlmOptions,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from voiceplatform.wire import ChatMessage
from vp_llm.providers.openai_compat import OpenAICompatible

REPO_ROBOTS = Path(__file__).resolve().parents[2] / "robots"
MESSAGES = [ChatMessage(role="system", content="Будь краток."), ChatMessage(role="user", content="Привет")]


def provider_for(robots_dir: Path, name: str) -> OpenAICompatible:
    return OpenAICompatible(load_robot(robots_dir / name))


async def collect(provider: OpenAICompatible) -> list[LlmChunk]:
    chunks = []
    async with contextlib.aclosing(provider.stream_complete(MESSAGES, LlmOptions(max_tokens=50))) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks


async def test_streams_deltas_and_usage(
    openai_server: OpenAIStandIn, make_openai_robot: Callable[..., str], robots_dir: Path
) -> None:
    openai_server.behavior.reply = "Добрый день. Чем помочь?"
    provider = provider_for(robots_dir, make_openai_robot())
    chunks = await collect(provider)
    await provider.aclose()
    assert "".join(c.text for c in chunks) == "Добрый день. Чем помочь?"
    assert sum(1 for c in chunks if c.text) == 4
    assert chunks[-1].prompt_tokens == 12 and chunks[-1].completion_tokens == 4
    body = openai_server.recorded.requests[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "stand-in" and body["max_tokens"] == 50
    assert body["messages"] == [
        {"role": "system", "content": "Будь краток."},
        {"role": "user", "content": "Привет"},
    ]
    assert openai_server.recorded.headers[0]["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(("status", "retryable"), [(401, False), (403, False), (429, True), (500, True)])
async def test_http_errors_map_to_the_error_tree_without_the_key(
    openai_server: OpenAIStandIn,
    make_openai_robot: Callable[..., str],
    robots_dir: Path,
    status: int,
    retryable: bool,
) -> None:
    openai_server.behavior.fail_status = status
    openai_server.behavior.fail_message = f"Incorrect API key provided: {API_KEY}"
    provider = provider_for(robots_dir, make_openai_robot())
    with pytest.raises(ProviderStatusError) as err:
        await collect(provider)
    await provider.aclose()
    assert err.value.status == status and err.value.retryable is retryable
    assert "Incorrect API key provided" in str(err.value)
    assert API_KEY not in str(err.value)


async def test_malformed_json_and_truncated_stream_are_protocol_errors(
    openai_server: OpenAIStandIn, make_openai_robot: Callable[..., str], robots_dir: Path
) -> None:
    provider = provider_for(robots_dir, make_openai_robot())
    openai_server.behavior.malformed_after = 1
    with pytest.raises(ProviderProtocolError, match="malformed"):
        await collect(provider)
    openai_server.behavior.malformed_after = None
    openai_server.behavior.stop_after = 2
    with pytest.raises(ProviderProtocolError, match="DONE"):
        await collect(provider)
    await provider.aclose()


async def test_connection_refused_and_timeout(
    openai_server: OpenAIStandIn, make_openai_robot: Callable[..., str], robots_dir: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    refused = provider_for(robots_dir, make_openai_robot("dead", base_url=f"http://127.0.0.1:{dead_port}/v1"))
    with pytest.raises(ProviderConnectionError):
        await collect(refused)
    openai_server.behavior.chunk_delay_s = 1.0
    slow = provider_for(robots_dir, make_openai_robot("slow", timeout_s=0.2))
    with pytest.raises(ProviderTimeoutError):
        await collect(slow)
    await refused.aclose()
    await slow.aclose()


async def test_closing_the_stream_closes_the_connection_at_once(
    openai_server: OpenAIStandIn, make_openai_robot: Callable[..., str], robots_dir: Path
) -> None:
    openai_server.behavior.reply = " ".join(f"слово{i}." for i in range(50))
    openai_server.behavior.chunk_delay_s = 0.05
    provider = provider_for(robots_dir, make_openai_robot())
    stream = provider.stream_complete(MESSAGES, LlmOptions())
    got = ""
    async for chunk in stream:
        got += chunk.text
        if got.strip():
            break
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(openai_server.recorded.client_closed.wait(), 1.0)
    record = openai_server.recorded.streams[0]
    assert record.client_closed_early and not record.finished
    assert record.chunks_sent < record.chunks_total
    await provider.aclose()


async def test_injected_transport_is_used() -> None:
    sse = (
        'data: {"choices":[{"delta":{"content":"Да."},"finish_reason":null}]}\n\n'
        ": ping\n\n"
        'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
        "data: [DONE]\n\n"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    robot = load_robot(REPO_ROBOTS / "pipeline_russian")
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    provider = OpenAICompatible(robot, client=client)
    chunks = await collect(provider)
    await provider.aclose()
    assert [c.text for c in chunks] == ["Да.", ""]
    assert chunks[-1].prompt_tokens == 3
