"""The Gemini provider against a real HTTP stand-in speaking streamGenerateContent SSE and Google RPC
errors: streaming and usage, key × model rotation with health shared between workers (in memory and
through a real NATS KV bucket), cooldowns, error mapping, masking, cancellation, bad streams."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from tests.stand_ins.gemini_server import (
    PER_DAY_QUOTA,
    GeminiStandIn,
    Rule,
    invalid_key,
    permission_denied,
    quota_exhausted,
    server_error,
    stall,
    unauthenticated,
)
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.bus.nats import NatsBus
from voiceplatform.config import RobotConfig, RobotConfigError, load_robot
from voiceplatform.config.robot import RobotSettings
from voiceplatform.providers import (
    LlmChunk,
    LlmOptions,
    ProviderConnectionError,
    ProviderProtocolError,
    ProviderStatusError,
)
from voiceplatform.providers.keypool import (
    BusKeyHealthStore,
    KeyHealthStore,
    KeysCoolingError,
    MemoryKeyHealthStore,
    key_id,
)
from voiceplatform.wire import ChatMessage
from vp_llm.app import LlmService
from vp_llm.providers.gemini import ContentBlockedError, GeminiLlm, seconds_until_daily_reset
from vp_llm.settings import LlmSettings

KEY_A, KEY_B, KEY_C = "AIzaSyA-test-key-aaaa", "AIzaSyB-test-key-bbbb", "AIzaSyC-test-key-cccc"
KEYS = [KEY_A, KEY_B, KEY_C]
M1, M2 = "gemini-2.5-flash", "gemini-2.0-flash"
MESSAGES = [
    ChatMessage(role="system", content="Будь краток."),
    ChatMessage(role="assistant", content="Здравствуйте!"),
    ChatMessage(role="user", content="Привет"),
]


class FakeClock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def robot(
    server: GeminiStandIn | None,
    keys: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    **gemini: Any,
) -> RobotConfig:
    options = {"models": [M1, M2], **gemini}
    if server is not None:
        options.setdefault("base_url", server.base_url)
    llm = {"provider": "gemini", "timeout_s": timeout_s, "providers": {"gemini": options}}
    settings = RobotSettings.model_validate({"llm": llm})
    secrets = {"GEMINI_API_KEYS": ",".join(keys)} if env is None else env
    return RobotConfig("gemini_bot", Path("."), settings, "", {}, secrets)


def provider(
    server: GeminiStandIn | None,
    keys: list[str] | None = None,
    health: KeyHealthStore | None = None,
    clock: FakeClock | None = None,
    timeout_s: float = 5.0,
    **gemini: Any,
) -> GeminiLlm:
    config = robot(server, KEYS if keys is None else keys, timeout_s=timeout_s, **gemini)
    return GeminiLlm(config, health=health, clock=clock or FakeClock())


async def collect(p: GeminiLlm, options: LlmOptions | None = None) -> list[LlmChunk]:
    chunks = []
    async with contextlib.aclosing(
        p.stream_complete(MESSAGES, options or LlmOptions(max_tokens=50))
    ) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks


def text_of(chunks: list[LlmChunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.fixture
async def gemini_server() -> AsyncIterator[GeminiStandIn]:
    async with GeminiStandIn() as server:
        yield server


async def test_streams_deltas_and_usage_over_the_real_wire_format(gemini_server: GeminiStandIn) -> None:
    gemini_server.behavior.reply = "Добрый день. Чем помочь?"
    p = provider(gemini_server, keys=[KEY_A])
    chunks = await collect(p, LlmOptions(temperature=0.3, max_tokens=50))
    await p.aclose()
    assert text_of(chunks) == "Добрый день. Чем помочь?"
    assert [c.text for c in chunks if c.text] == ["Добрый ", "день. ", "Чем ", "помочь?"]
    last = chunks[-1]
    assert last.prompt_tokens == 9 and last.completion_tokens == 4
    assert last.meta == {"finish_reason": "stop", "model": M1, "key_id": key_id(KEY_A)}
    req = gemini_server.recorded.requests[0]
    assert (req.model, req.action, req.query) == (M1, "streamGenerateContent", {"alt": "sse"})
    assert req.headers["x-goog-api-key"] == KEY_A and "key" not in req.query  # never in the URL
    assert req.body == {
        "contents": [
            {"role": "model", "parts": [{"text": "Здравствуйте!"}]},
            {"role": "user", "parts": [{"text": "Привет"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Будь краток."}]},
        "generationConfig": {
            "temperature": 0.3,
            "maxOutputTokens": 50,
            "candidateCount": 1,
            "thinkingConfig": {"thinkingBudget": 0},
        },
    }


async def test_crlf_framing_and_several_words_per_chunk(gemini_server: GeminiStandIn) -> None:
    gemini_server.behavior.crlf = True
    gemini_server.behavior.words_per_chunk = 3
    gemini_server.behavior.reply = "раз два три четыре пять"
    p = provider(gemini_server, keys=[KEY_A], models=[M2])
    chunks = await collect(p)
    await p.aclose()
    assert [c.text for c in chunks if c.text] == ["раз два три ", "четыре пять"]
    assert "thinkingConfig" not in gemini_server.recorded.requests[0].body["generationConfig"]


async def test_key_pool_three_keys_two_models_rotation_without_surfacing_errors(
    gemini_server: GeminiStandIn,
) -> None:
    """The issue's test: A is out of quota on M1 (429 + RetryInfo), B is invalid. Every call succeeds;
    (A, M1) is skipped until its cooldown passes; B is never tried again."""
    gemini_server.on(quota_exhausted(M1, retry_delay="30s"), key=KEY_A, model=M1)
    gemini_server.on(invalid_key(), key=KEY_B)
    clock = FakeClock()
    p = provider(gemini_server, clock=clock)
    for _ in range(6):
        assert text_of(await collect(p)) == gemini_server.behavior.reply
    used = gemini_server.recorded.used()
    assert used.count((KEY_A, M1)) == 1
    assert [k for k, _ in used].count(KEY_B) == 1
    ok = [(r.key, r.model) for r in gemini_server.recorded.requests if r.status == 200]
    assert len(ok) == 6 and set(ok) == {(KEY_C, M1)}  # the best model stays in use while one key serves it
    # still cooling at 29 s; after 31 s (A, M1) is tried again and, quota back, serves again
    clock.now += 29
    await collect(p)
    assert used.count((KEY_A, M1)) == gemini_server.recorded.used().count((KEY_A, M1))
    gemini_server.clear(key=KEY_A, model=M1)
    clock.now += 2
    for _ in range(3):
        await collect(p)
    assert gemini_server.recorded.used().count((KEY_A, M1)) >= 2
    assert [k for k, _ in gemini_server.recorded.used()].count(KEY_B) == 1
    await p.aclose()


async def test_two_workers_share_key_health_through_one_store(gemini_server: GeminiStandIn) -> None:
    gemini_server.on(quota_exhausted(M1, retry_delay="30s"), key=KEY_A, model=M1)
    gemini_server.on(invalid_key(), key=KEY_B)
    store = MemoryKeyHealthStore()
    clock = FakeClock()
    worker1 = provider(gemini_server, health=store, clock=clock)
    worker2 = provider(gemini_server, health=store, clock=clock)
    for _ in range(3):
        await collect(worker1)
    learned = len(gemini_server.recorded.requests)
    for _ in range(4):
        assert text_of(await collect(worker2)) == gemini_server.behavior.reply
    after = gemini_server.recorded.used()[learned:]
    assert after == [(KEY_C, M1)] * 4  # worker 2 never paid for what worker 1 learned
    await worker1.aclose()
    await worker2.aclose()


@pytest.fixture
async def nats_workers(nats_url: str) -> AsyncIterator[tuple[NatsBus, NatsBus, str]]:
    bucket = f"test_gemini_health_{uuid.uuid4().hex[:8]}"
    bus1 = await NatsBus.connect(nats_url, "llm-1")
    bus2 = await NatsBus.connect(nats_url, "llm-2")
    try:
        yield bus1, bus2, bucket
    finally:
        try:
            await bus1.jetstream().delete_key_value(bucket)
        finally:
            await bus1.close()
            await bus2.close()


async def test_two_workers_share_key_health_through_nats_kv(
    gemini_server: GeminiStandIn, nats_workers: tuple[NatsBus, NatsBus, str]
) -> None:
    bus1, bus2, bucket = nats_workers
    gemini_server.on(quota_exhausted(M1, retry_delay="30s"), key=KEY_A, model=M1)
    gemini_server.on(invalid_key(), key=KEY_B)
    clock = FakeClock()
    worker1 = provider(gemini_server, health=BusKeyHealthStore(bus1, bucket=bucket), clock=clock)
    worker2 = provider(gemini_server, health=BusKeyHealthStore(bus2, bucket=bucket), clock=clock)
    for _ in range(3):
        await collect(worker1)
    learned = len(gemini_server.recorded.requests)
    for _ in range(4):
        assert text_of(await collect(worker2)) == gemini_server.behavior.reply
    assert gemini_server.recorded.used()[learned:] == [(KEY_C, M1)] * 4
    kv = await bus1.key_value(bucket)
    record = await kv.get(f"gemini.{key_id(KEY_B)}._any")
    assert record is not None and b'"invalid": true' in record[0]
    assert all(k.encode() not in record[0] for k in KEYS)
    await worker1.aclose()
    await worker2.aclose()


async def test_every_pair_cooling_is_a_retryable_429_with_the_shortest_wait(
    gemini_server: GeminiStandIn,
) -> None:
    gemini_server.on(quota_exhausted(M1, retry_delay="40s"), model=M1)
    gemini_server.on(quota_exhausted(M2, retry_delay="12s"), model=M2)
    p = provider(gemini_server, keys=[KEY_A, KEY_B])
    with pytest.raises(KeysCoolingError) as first:
        await collect(p)
    assert first.value.status == 429 and first.value.retryable
    assert len(gemini_server.recorded.requests) == 4  # each pair tried once in the same call
    with pytest.raises(KeysCoolingError) as second:
        await collect(p)
    assert len(gemini_server.recorded.requests) == 4  # nothing sent while everything cools
    assert second.value.retry_after_s == pytest.approx(12.0) and "12.0s" in str(second.value)
    await p.aclose()


async def test_retry_after_header_and_daily_quota_set_the_cooldown(gemini_server: GeminiStandIn) -> None:
    clock = FakeClock()
    store = MemoryKeyHealthStore()
    gemini_server.on(server_error(503, times=None, retry_after="7"), key=KEY_A, model=M1)
    gemini_server.on(quota_exhausted(M2, retry_delay="47s", quota_id=PER_DAY_QUOTA), key=KEY_A, model=M2)
    p = provider(gemini_server, keys=[KEY_A, KEY_B], health=store, clock=clock)
    await collect(p)  # A/M1 503 → B/M1 serves
    for _ in range(2):  # the requested model leads; keys take turns, so one call starts with A
        await collect(p, LlmOptions(model=M2))  # A/M2 429 PerDay → B/M2 serves
    assert (KEY_A, M2) in gemini_server.recorded.used()
    kid = key_id(KEY_A)
    server_cooled = store.records[("gemini", kid, M1)]
    assert server_cooled.reason == "server" and server_cooled.cooldown_until == clock.now + 7
    daily = store.records[("gemini", kid, M2)]
    assert daily.reason == "quota"
    assert daily.cooldown_until == pytest.approx(clock.now + seconds_until_daily_reset(clock.now))
    assert daily.cooldown_until - clock.now > 47
    await p.aclose()


async def test_a_500_once_and_a_missing_model_rotate_within_the_call(gemini_server: GeminiStandIn) -> None:
    gemini_server.on(server_error(500, times=1))
    p = provider(gemini_server, keys=[KEY_A])
    assert text_of(await collect(p)) == gemini_server.behavior.reply
    assert [r.status for r in gemini_server.recorded.requests] == [500, 200]
    assert gemini_server.recorded.used() == [(KEY_A, M1), (KEY_A, M2)]
    await p.aclose()
    gemini_server.recorded.requests.clear()
    gemini_server.on(server_error(404, times=None), model="gemini-9-missing")
    q = provider(gemini_server, keys=[KEY_A], models=["gemini-9-missing", M2])
    assert text_of(await collect(q)) == gemini_server.behavior.reply
    assert gemini_server.recorded.used() == [(KEY_A, "gemini-9-missing"), (KEY_A, M2)]
    await q.aclose()


async def test_a_stall_times_out_rotates_and_the_stand_in_sees_the_close(
    gemini_server: GeminiStandIn,
) -> None:
    gemini_server.on(stall(5.0), key=KEY_A)
    p = provider(gemini_server, keys=[KEY_A, KEY_B], timeout_s=0.3, models=[M1])
    assert text_of(await collect(p)) == gemini_server.behavior.reply
    assert gemini_server.recorded.used() == [(KEY_A, M1), (KEY_B, M1)]
    await asyncio.wait_for(gemini_server.recorded.client_closed.wait(), 1.0)
    assert gemini_server.recorded.requests[0].client_closed_early
    await p.aclose()


async def test_closing_the_stream_closes_the_http_stream_at_once(gemini_server: GeminiStandIn) -> None:
    gemini_server.behavior.reply = " ".join(f"слово{i}." for i in range(50))
    gemini_server.behavior.chunk_delay_s = 0.05
    p = provider(gemini_server, keys=[KEY_A])
    stream = p.stream_complete(MESSAGES, LlmOptions())
    got = ""
    async for chunk in stream:
        got += chunk.text
        if got.strip():
            break
    await stream.aclose()
    await asyncio.wait_for(gemini_server.recorded.client_closed.wait(), 1.0)
    record = gemini_server.recorded.requests[0]
    assert record.client_closed_early and not record.finished
    assert record.chunks_sent < record.chunks_total
    assert len(gemini_server.recorded.requests) == 1  # closing is not a failure: no rotation
    await p.aclose()


async def test_cancelling_the_consuming_task_closes_the_stream(gemini_server: GeminiStandIn) -> None:
    gemini_server.behavior.reply = " ".join(f"слово{i}." for i in range(50))
    gemini_server.behavior.chunk_delay_s = 0.05
    p = provider(gemini_server, keys=[KEY_A])
    first_text = asyncio.Event()

    async def consume() -> None:
        async for chunk in p.stream_complete(MESSAGES, LlmOptions()):
            if chunk.text:
                first_text.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_text.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gemini_server.recorded.client_closed.wait(), 1.0)
    assert not gemini_server.recorded.requests[0].finished
    await p.aclose()


async def test_no_retry_once_text_was_yielded(gemini_server: GeminiStandIn) -> None:
    gemini_server.behavior.error_after = 2  # a 503 error event after two chunks
    p = provider(gemini_server)
    got: list[str] = []
    with pytest.raises(ProviderStatusError) as err:
        async for chunk in p.stream_complete(MESSAGES, LlmOptions()):
            got.append(chunk.text)
    assert "".join(got) == "Здравствуйте. Чем "
    assert err.value.status == 503 and err.value.retryable
    assert len(gemini_server.recorded.requests) == 1
    await p.aclose()


@pytest.mark.parametrize(
    ("rule", "status"),
    [(unauthenticated, 401), (permission_denied, 403), (invalid_key, 400)],
)
async def test_bad_key_with_no_other_key_left_is_not_retryable_and_masked(
    gemini_server: GeminiStandIn, rule: Any, status: int
) -> None:
    echoing: Rule = rule() if rule is unauthenticated else rule(KEY_A)
    assert echoing.body is not None
    echoing.body["error"]["message"] += f" key={KEY_A}"  # every error text echoes the key: masked?
    gemini_server.on(echoing)
    p = provider(gemini_server, keys=[KEY_A])
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(ProviderStatusError) as err:
            await collect(p)
        assert err.value.status == status and err.value.retryable is False
        with pytest.raises(ProviderStatusError) as again:  # disabled now: no request, still not retryable
            await collect(p)
    # the key is disabled for every model at once: one request in all, the second call sends none
    assert again.value.retryable is False and len(gemini_server.recorded.requests) == 1
    assert KEY_A not in str(err.value) and KEY_A not in str(again.value)
    assert key_id(KEY_A) in str(err.value)
    assert logs and KEY_A not in repr(logs)
    await p.aclose()


@pytest.mark.parametrize(("status", "error_type"), [(429, KeysCoolingError), (500, ProviderStatusError)])
async def test_quota_and_server_errors_are_retryable(
    gemini_server: GeminiStandIn, status: int, error_type: type[Exception]
) -> None:
    rule = quota_exhausted(M1) if status == 429 else server_error(500, times=None)
    rule.body["error"]["message"] += f" ({KEY_A})"  # type: ignore[index]
    gemini_server.on(rule)
    p = provider(gemini_server, keys=[KEY_A], models=[M1])
    with pytest.raises(error_type) as err:
        await collect(p)
    assert isinstance(err.value, ProviderStatusError)
    assert err.value.status == status and err.value.retryable
    assert KEY_A not in str(err.value)
    await p.aclose()


async def test_keys_never_reach_logs_or_errors_during_rotation(gemini_server: GeminiStandIn) -> None:
    gemini_server.on(quota_exhausted(M1), key=KEY_A, model=M1)
    gemini_server.on(invalid_key(KEY_B), key=KEY_B)
    gemini_server.on(permission_denied(KEY_C), key=KEY_C, model=M1)
    p = provider(gemini_server)
    with structlog.testing.capture_logs() as logs:
        assert text_of(await collect(p)) == gemini_server.behavior.reply
    dump = repr(logs)
    assert "gemini.attempt_failed" in dump and "keypool.cooling" in dump
    assert all(k not in dump for k in KEYS)
    assert {key_id(KEY_A), key_id(KEY_B)} <= {e.get("key_id") for e in logs}
    await p.aclose()


async def test_malformed_and_truncated_streams_are_protocol_errors(gemini_server: GeminiStandIn) -> None:
    p = provider(gemini_server, keys=[KEY_A, KEY_B])
    gemini_server.behavior.malformed_after = 1
    with pytest.raises(ProviderProtocolError, match="malformed"):
        await collect(p)
    assert len(gemini_server.recorded.requests) == 1  # not the key's fault: no rotation
    gemini_server.behavior.malformed_after = None
    gemini_server.behavior.stop_after = 2
    with pytest.raises(ProviderProtocolError, match="finishReason"):
        await collect(p)
    await p.aclose()


async def test_blocked_prompt_and_safety_stop_are_not_retryable(gemini_server: GeminiStandIn) -> None:
    p = provider(gemini_server, keys=[KEY_A])
    gemini_server.behavior.block_reason = "SAFETY"
    with pytest.raises(ContentBlockedError, match="prompt blocked: SAFETY") as blocked:
        await collect(p)
    assert blocked.value.retryable is False
    gemini_server.behavior.block_reason = None
    gemini_server.behavior.finish_reason = "PROHIBITED_CONTENT"
    with pytest.raises(ContentBlockedError, match="PROHIBITED_CONTENT"):
        await collect(p)
    gemini_server.behavior.finish_reason = "MAX_TOKENS"
    assert (await collect(p))[-1].meta["finish_reason"] == "length"
    await p.aclose()


async def test_connection_refused_stops_rotating_after_two_attempts() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = provider(None, base_url=f"http://127.0.0.1:{dead}/v1beta")
    with pytest.raises(ProviderConnectionError) as err:
        await collect(p)
    assert err.value.retryable
    plan = await p.pool.candidates()
    assert len(plan) == 4  # two pairs cooled briefly, the rest untouched: the network, not the keys
    await p.aclose()


def test_options_and_keys_come_from_the_robot() -> None:
    with pytest.raises(RobotConfigError, match="modles"):
        GeminiLlm(robot(None, KEYS, modles=[M1]))
    with pytest.raises(RobotConfigError, match="no API key"):
        GeminiLlm(robot(None, [], env={}))
    env = {"GEMINI_API_KEY": KEY_A, "GEMINI_API_KEY_2": KEY_B, "GEMINI_API_KEYS": f" {KEY_C} , {KEY_A}"}
    p = GeminiLlm(robot(None, [], env=env))
    assert p.pool.key_ids == [key_id(KEY_C), key_id(KEY_A), key_id(KEY_B)]
    assert p.base_url == "https://generativelanguage.googleapis.com/v1beta"
    settings = RobotSettings.model_validate({"llm": {"provider": "gemini", "model": "gemini-2.5-pro"}})
    default = GeminiLlm(RobotConfig("r", Path("."), settings, "", {}, {"GEMINI_API_KEY": KEY_A}))
    assert default.models == ("gemini-2.5-pro",)


async def test_requested_model_leads_only_when_it_is_a_gemini_model(gemini_server: GeminiStandIn) -> None:
    p = provider(gemini_server, keys=[KEY_A])
    await collect(p, LlmOptions(model="qwen2.5:7b"))  # another provider's model in a fallback chain
    await collect(p, LlmOptions(model="gemini-2.5-pro"))
    assert [r.model for r in gemini_server.recorded.requests] == [M1, "gemini-2.5-pro"]
    await p.aclose()


def _mock_provider(sse: str, seen: list[httpx.Request] | None = None) -> GeminiLlm:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return GeminiLlm(robot(None, [KEY_A], models=[M2]), client=client, clock=FakeClock())


async def test_sse_comments_multiline_data_thoughts_and_a_last_event_without_blank_line() -> None:
    sse = (
        ": keep-alive\r\n\r\n"
        'data: {"candidates": [{"content": {"parts": [{"text": "hmm", "thought": true},\n'
        'data: {"text": "Да."}]}}],\n'
        'data: "usageMetadata": {"promptTokenCount": "3"}}\n\n'
        'event: message\ndata: {"candidates": [{"content": {"parts": [{"text": " Конечно."}]},'
        ' "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2,'
        ' "thoughtsTokenCount": 5}}'
    )
    seen: list[httpx.Request] = []
    p = _mock_provider(sse, seen)
    chunks = await collect(p)
    await p.aclose()
    assert [c.text for c in chunks] == ["Да.", " Конечно.", ""]
    assert chunks[-1].prompt_tokens == 3 and chunks[-1].completion_tokens == 7  # thinking is billed output
    url = str(seen[0].url)
    assert (
        url == f"https://generativelanguage.googleapis.com/v1beta/models/{M2}:streamGenerateContent?alt=sse"
    )
    assert KEY_A not in url and seen[0].headers["x-goog-api-key"] == KEY_A


@pytest.mark.parametrize(
    "sse",
    [
        '[{"candidates": [{"content": {"parts": [{"text": "Да."}]}}]}]',  # the non-SSE JSON array form
        'data: {"candidates": {"not": "a list"}}\n\n',
        'data: {"candidates": [{"content": {"parts": "text"}}]}\n\n',
        "data: [1, 2]\n\n",
    ],
)
async def test_non_sse_bodies_and_wrong_shapes_are_protocol_errors(sse: str) -> None:
    p = _mock_provider(sse)
    with pytest.raises(ProviderProtocolError):
        await collect(p)
    await p.aclose()


async def test_the_llm_service_gives_gemini_its_bus_wide_key_health(broker: MemoryBroker) -> None:
    """Every LLM worker's Gemini shares one health store: the one on the bus (NATS KV in production)."""
    service = LlmService(LlmSettings())
    await service.start(broker.bus("llm"))
    try:
        made = service._factory("gemini", robot(None, KEYS))
        assert isinstance(made, GeminiLlm)
        assert isinstance(made.pool.store, BusKeyHealthStore)
        script = service._factory("script", load_robot(Path("robots/pipeline_russian")))
        assert not isinstance(script, GeminiLlm)
    finally:
        await service.drain(1.0)
