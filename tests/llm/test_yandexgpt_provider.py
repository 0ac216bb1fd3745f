"""The YandexGPT provider against a real HTTP stand-in speaking the native REST completion stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.stand_ins.yandexgpt_server import CONTENT_FILTER, FINAL, PARTIAL, YandexGptStandIn
from voiceplatform.config import RobotConfigError, load_robot
from voiceplatform.providers import (
    LlmChunk,
    LlmOptions,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from voiceplatform.wire import ChatMessage
from vp_llm.providers.yandexgpt import ContentFilteredError, CumulativeText, YandexGpt

API_KEY = "AQVN-yc-test-secret-7731"
IAM_TOKEN = "t1.iam-test-secret-9090"
FOLDER = "b1gstandinfolder"
MESSAGES = [
    ChatMessage(role="system", content="Будь краток."),
    ChatMessage(role="user", content="Привет"),
    ChatMessage(role="assistant", content="Здравствуйте!"),
    ChatMessage(role="user", content="Как дела?"),
]


@pytest.fixture
async def yandex_server() -> AsyncIterator[YandexGptStandIn]:
    async with YandexGptStandIn(api_key=API_KEY, folder_id=FOLDER, iam_token=IAM_TOKEN) as server:
        yield server


@pytest.fixture
def make_robot(
    tmp_path: Path, yandex_server: YandexGptStandIn, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., YandexGpt]:
    for name in ("YANDEX_API_KEY", "YANDEX_IAM_TOKEN", "YANDEX_FOLDER_ID"):
        monkeypatch.delenv(name, raising=False)

    def make(
        name: str = "yandex_bot",
        env: str = f"YANDEX_API_KEY={API_KEY}\n",
        llm: dict[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
        **yandex: Any,
    ) -> YandexGpt:
        folder = tmp_path / "robots" / name
        folder.mkdir(parents=True)
        options = {"base_url": yandex_server.base_url, "folder_id": FOLDER, **yandex}
        config = {
            "llm": {"provider": "yandex", "timeout_s": 5, **(llm or {}), "providers": {"yandex": options}}
        }
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        (folder / "prompt.txt").write_text("Ты вежливый помощник.", encoding="utf-8")
        (folder / ".env").write_text(env, encoding="utf-8")
        return YandexGpt(load_robot(folder, root_env=tmp_path / "none.env"), client=client)

    return make


async def collect(provider: YandexGpt, options: LlmOptions | None = None) -> list[LlmChunk]:
    chunks = []
    opts = options or LlmOptions(temperature=0.3, max_tokens=50)
    async with contextlib.aclosing(provider.stream_complete(MESSAGES, opts)) as stream:  # type: ignore[type-var]
        async for chunk in stream:
            chunks.append(chunk)
    return chunks


async def test_cumulative_lines_become_deltas_with_usage_and_the_vendor_request(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    yandex_server.behavior.reply = "Добрый день. Чем могу помочь?"
    provider = make_robot()
    chunks = await collect(provider)
    await provider.aclose()
    assert [c.text for c in chunks] == ["Добрый ", "день. ", "Чем ", "могу ", "помочь?"]
    assert chunks[-1].prompt_tokens == 28 and chunks[-1].completion_tokens == 5
    assert all(c.prompt_tokens == 0 for c in chunks[:-1])
    assert chunks[-1].meta["finish_reason"] == "stop" and chunks[-1].meta["model_version"] == "23.10.2024"
    body = yandex_server.recorded.requests[0]
    assert body == {
        "modelUri": f"gpt://{FOLDER}/yandexgpt-lite/latest",
        "completionOptions": {"stream": True, "temperature": 0.3, "maxTokens": "50"},
        "messages": [
            {"role": "system", "text": "Будь краток."},
            {"role": "user", "text": "Привет"},
            {"role": "assistant", "text": "Здравствуйте!"},
            {"role": "user", "text": "Как дела?"},
        ],
    }
    headers = yandex_server.recorded.headers[0]
    assert headers["authorization"] == f"Api-Key {API_KEY}"
    assert headers["x-folder-id"] == FOLDER and headers["x-data-logging-enabled"] == "false"
    assert len(headers["x-client-request-id"]) == 36


async def test_repeated_shorter_and_rewritten_lines_never_emit_wrong_text(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    yandex_server.behavior.script = [
        ("", PARTIAL),
        ("При", PARTIAL),
        ("При", PARTIAL),  # a repeat
        ("Привет, ", PARTIAL),
        ("Привет,", PARTIAL),  # shorter: trailing space trimmed
        ("Привет, мир", PARTIAL),
        ("Привет, Мир!", PARTIAL),  # rewrites an emitted character
        ("Привет, Мир! Пока.", FINAL),
    ]
    provider = make_robot()
    with capture_logs() as logs:
        chunks = await collect(provider)
    await provider.aclose()
    assert [c.text for c in chunks] == ["При", "вет, ", "мир", " Пока."]
    assert chunks[-1].meta["text_rewrites"] == "1"
    rewritten = [e for e in logs if e["event"] == "yandexgpt.text_rewritten"]
    assert rewritten == [
        {
            "event": "yandexgpt.text_rewritten",
            "log_level": "warning",
            "emitted_chars": 11,
            "common_prefix": 8,
            "new_chars": 12,
        }
    ]


def test_cumulative_text_rules() -> None:
    text = CumulativeText()
    assert [text.advance(t) for t in ("a", "ab", "ab", "a", "abc", "xyz", "xyz!")] == [
        "a",
        "b",
        "",
        "",
        "c",
        "",
        "!",
    ]
    assert text.rewrites == 1


async def test_model_uri_options_and_iam_auth(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    pro = make_robot("pro", model="yandexgpt", reasoning_mode="DISABLED", data_logging=True)
    assert pro.model_uri(LlmOptions(model="gemini-2.5-flash")) == f"gpt://{FOLDER}/yandexgpt/latest"
    assert pro.model_uri(LlmOptions(model=f"gpt://{FOLDER}/llama/rc")) == f"gpt://{FOLDER}/llama/rc"
    body = pro.body(
        [*MESSAGES, ChatMessage(role="user", content="  ")], LlmOptions(temperature=1.7, max_tokens=9)
    )
    assert body["completionOptions"] == {
        "stream": True,
        "temperature": 1.0,
        "maxTokens": "9",
        "reasoningOptions": {"mode": "DISABLED"},
    }
    assert len(body["messages"]) == 4  # the blank message is left out
    tuned = make_robot("tuned", model_uri=f"gpt://{FOLDER}/yandexgpt-lite/latest@tuned1", folder_id="")
    assert tuned.folder_id == FOLDER
    by_llm_model = make_robot("llm_model", llm={"model": "yandexgpt/rc"})
    assert by_llm_model.model_uri(LlmOptions()) == f"gpt://{FOLDER}/yandexgpt/rc"

    iam = make_robot("iam", env=f"YANDEX_IAM_TOKEN={IAM_TOKEN}\nYANDEX_FOLDER_ID={FOLDER}\n", folder_id="")
    chunks = await collect(iam)
    chunks += await collect(pro)
    for p in (pro, tuned, by_llm_model, iam):
        await p.aclose()
    assert "".join(c.text for c in chunks) == 2 * "Здравствуйте. Чем могу помочь?"
    first, second = yandex_server.recorded.headers
    assert first["authorization"] == f"Bearer {IAM_TOKEN}" and first["x-folder-id"] == FOLDER
    assert second["x-data-logging-enabled"] == "true"
    assert yandex_server.recorded.requests[1]["modelUri"] == f"gpt://{FOLDER}/yandexgpt/latest"


def test_missing_secrets_folder_or_unknown_options_fail_at_build(
    make_robot: Callable[..., YandexGpt],
) -> None:
    with pytest.raises(RobotConfigError, match="YANDEX_API_KEY or YANDEX_IAM_TOKEN"):
        make_robot("nokey", env="")
    with pytest.raises(RobotConfigError, match="folder_id"):
        make_robot("nofolder", folder_id="")
    with pytest.raises(RobotConfigError, match=r"llm\.providers\.yandex\.voice"):
        make_robot("typo", voice="alena")


@pytest.mark.parametrize(
    ("status", "retryable"), [(401, False), (403, False), (429, True), (500, True), (503, True)]
)
async def test_http_errors_map_to_the_error_tree_without_the_key(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt], status: int, retryable: bool
) -> None:
    yandex_server.behavior.fail_status = status
    yandex_server.behavior.fail_message = f"Unknown api key '{API_KEY}'"
    provider = make_robot()
    with capture_logs() as logs, pytest.raises(ProviderStatusError) as err:
        await collect(provider)
    await provider.aclose()
    assert err.value.status == status and err.value.retryable is retryable
    assert "Unknown api key" in str(err.value)
    assert API_KEY not in str(err.value) and API_KEY not in repr(err.value.__cause__)
    assert any(e["event"] == "yandexgpt.http_error" for e in logs)
    assert API_KEY not in repr(logs)


async def test_real_auth_and_folder_checks_give_401_and_403(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    wrong_key = make_robot("wrong_key", env="YANDEX_API_KEY=AQVN-not-the-key\n")
    with pytest.raises(ProviderStatusError) as unauthorized:
        await collect(wrong_key)
    wrong_folder = make_robot("wrong_folder", folder_id="b1gotherfolder")
    with pytest.raises(ProviderStatusError) as forbidden:
        await collect(wrong_folder)
    await wrong_key.aclose()
    await wrong_folder.aclose()
    assert unauthorized.value.status == 401 and not unauthorized.value.retryable
    assert "(grpc 16)" in str(unauthorized.value) and "AQVN-not-the-key" not in str(unauthorized.value)
    assert forbidden.value.status == 403 and not forbidden.value.retryable


async def test_error_line_in_the_stream_keeps_its_status(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    yandex_server.behavior.fail_status = 429
    yandex_server.behavior.fail_message = "Quota limit ai.languageModels.requestCount.rate exceeded"
    yandex_server.behavior.error_after = 2
    provider = make_robot()
    got: list[str] = []
    with pytest.raises(ProviderStatusError) as err:
        async for chunk in provider.stream_complete(MESSAGES, LlmOptions()):
            got.append(chunk.text)
    await provider.aclose()
    assert got == ["Здравствуйте. ", "Чем "]
    assert err.value.status == 429 and err.value.retryable and "Quota limit" in str(err.value)


async def test_content_filter_is_a_clear_non_retryable_error(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    yandex_server.behavior.final_status = CONTENT_FILTER
    provider = make_robot()
    with pytest.raises(ContentFilteredError) as err:
        await collect(provider)
    await provider.aclose()
    assert isinstance(err.value, ProviderError) and err.value.retryable is False
    assert err.value.kind == "content_filter" and "content filter" in str(err.value)


async def test_malformed_and_truncated_streams_are_protocol_errors(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    provider = make_robot()
    yandex_server.behavior.malformed_after = 1
    with pytest.raises(ProviderProtocolError, match="malformed"):
        await collect(provider)
    yandex_server.behavior.malformed_after = None
    yandex_server.behavior.stop_after = 2
    with pytest.raises(ProviderProtocolError, match="without a final alternative"):
        await collect(provider)
    await provider.aclose()


@pytest.mark.parametrize("stall_after", [0, 2])
async def test_stall_is_a_timeout_and_closes_the_connection(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt], stall_after: int
) -> None:
    yandex_server.behavior.stall_after = stall_after
    provider = make_robot(llm={"timeout_s": 0.3})
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await collect(provider)
    assert time.monotonic() - started < 1.5
    await asyncio.wait_for(yandex_server.recorded.client_closed.wait(), 1.0)
    await provider.aclose()


async def test_slow_trickle_and_slow_first_token_are_timeouts(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    # bytes keep coming (httpx's read timeout never fires) but no line completes in time
    yandex_server.behavior.trickle_byte_delay_s = 0.02
    trickle = make_robot("trickle", llm={"timeout_s": 0.4})
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match="no reply line"):
        await collect(trickle)
    assert time.monotonic() - started < 1.5
    # each line in time, but the whole reply too slow
    yandex_server.behavior.trickle_byte_delay_s = None
    yandex_server.behavior.line_delay_s = 0.15
    total = make_robot("total", llm={"timeout_s": 1}, total_timeout_s=0.4)
    with pytest.raises(ProviderTimeoutError, match="total_timeout_s"):
        await collect(total)
    # first line later than first_token_timeout_s although within llm.timeout_s
    yandex_server.behavior.line_delay_s = 0.0
    yandex_server.behavior.stall_after = 0
    first = make_robot("first", llm={"timeout_s": 5}, first_token_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await collect(first)
    assert time.monotonic() - started < 1.0
    for p in (trickle, total, first):
        await p.aclose()


async def test_closing_the_stream_closes_the_connection_at_once(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    yandex_server.behavior.reply = " ".join(f"слово{i}." for i in range(50))
    yandex_server.behavior.line_delay_s = 0.05
    provider = make_robot()
    stream = provider.stream_complete(MESSAGES, LlmOptions())
    got = ""
    async for chunk in stream:
        got += chunk.text
        if got.strip():
            break
    closed_at = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(yandex_server.recorded.client_closed.wait(), 1.0)
    record = yandex_server.recorded.streams[0]
    assert record.client_closed_early and not record.finished
    assert record.lines_sent < record.lines_total
    assert record.closed_at - closed_at < 0.2
    await provider.aclose()


async def test_cancelling_the_consumer_task_closes_the_connection(
    yandex_server: YandexGptStandIn, make_robot: Callable[..., YandexGpt]
) -> None:
    yandex_server.behavior.reply = " ".join(f"слово{i}." for i in range(50))
    yandex_server.behavior.line_delay_s = 0.5
    provider = make_robot()
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream_complete(MESSAGES, LlmOptions()):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2.0)
    cancelled_at = time.monotonic()
    task.cancel()  # the task is waiting for the next line inside the provider
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.wait_for(yandex_server.recorded.client_closed.wait(), 1.0)
    assert yandex_server.recorded.streams[0].closed_at - cancelled_at < 0.2
    await provider.aclose()


async def test_connection_refused_is_a_connection_error(make_robot: Callable[..., YandexGpt]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    provider = make_robot(base_url=f"http://127.0.0.1:{dead_port}/foundationModels/v1")
    with pytest.raises(ProviderConnectionError):
        await collect(provider)
    await provider.aclose()


async def test_injected_transport_and_tolerated_shapes(make_robot: Callable[..., YandexGpt]) -> None:
    lines = [
        {"result": {"alternatives": [{"message": {"role": "assistant", "text": "Да"}, "status": "X_NEW"}]}},
        {"result": {"usage": {"inputTextTokens": "3"}}},  # a line without alternatives
        {
            "result": {
                "alternatives": [
                    {"message": {"text": "Да, конечно"}, "status": "ALTERNATIVE_STATUS_TRUNCATED_FINAL"}
                ],
                "usage": {"inputTextTokens": 3, "completionTokens": "2", "totalTokens": "5"},
            }
        },
    ]
    ndjson = "\n" + "\n".join(
        "data: " + json.dumps(x) if i == 1 else json.dumps(x) for i, x in enumerate(lines)
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/foundationModels/v1/completion"
        return httpx.Response(200, text=ndjson, headers={"content-type": "application/json"})

    provider = make_robot(client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with capture_logs() as logs:
        chunks = await collect(provider)
    await provider.aclose()
    assert [c.text for c in chunks] == ["Да", ", конечно"]
    assert chunks[-1].meta["finish_reason"] == "length"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (3, 2)
    assert [e["status"] for e in logs if e["event"] == "yandexgpt.unknown_status"] == ["X_NEW"]


class _CutStream(httpx.AsyncByteStream):
    """One partial line, then the peer drops the connection mid-body."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        line = {"result": {"alternatives": [{"message": {"text": "Да"}, "status": PARTIAL}]}}
        yield json.dumps(line).encode() + b"\n"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_connection_dropped_mid_body_is_a_truncated_stream(
    make_robot: Callable[..., YandexGpt],
) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=_CutStream()))
    provider = make_robot(client=httpx.AsyncClient(transport=transport))
    got: list[str] = []
    with pytest.raises(ProviderProtocolError, match="truncated"):
        async for chunk in provider.stream_complete(MESSAGES, LlmOptions()):
            got.append(chunk.text)
    await provider.aclose()
    assert got == ["Да"]
