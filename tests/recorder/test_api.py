"""The recorder's HTTP API, in process: a private JetStream NATS, real PostgreSQL (a schema per test)
and real Redis (db 15). Calls are played on NATS, recorded by the real recorder, then read back."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import nats
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from starlette.applications import Starlette
from structlog.testing import capture_logs

from tests.recorder.conftest import OPERATOR_TOKEN, new_call_id, settle, stream_messages
from tests.recorder.test_directory import copy_robots
from tests.recorder.test_recorder import T0, call_sequence, play
from voiceplatform import subjects
from voiceplatform.bus.nats import NatsBus
from voiceplatform.runtime.service import build_http_app
from voiceplatform.wire import CallEnded, CallStarted, Message
from voiceplatform_devstack.devinfra import TcpGate, free_port
from vp_recorder.api import MAX_LIMIT, RecorderApi, build_api
from vp_recorder.app import RecorderService
from vp_recorder.directory import sync_scenarios
from vp_recorder.scenario_cache import SCENARIO_TTL_S, scenario_key
from vp_recorder.settings import RecorderSettings

StartRecorder = Callable[[RecorderSettings], Awaitable[RecorderService]]
ROBOTS = Path(__file__).resolve().parents[2] / "robots"


def iso_ms(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def app_of(service: RecorderService) -> Starlette:
    app = service.asgi_app()
    assert app is not None
    return app


@asynccontextmanager
async def client_of(app: Starlette, token: str | None = OPERATOR_TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://recorder", headers=headers) as client:
        yield client


def short_call(
    call_id: str, robot: str, channel: Literal["web", "phone"], caller: str, start_ms: int, ended: bool
) -> list[tuple[str, Message]]:
    lc = subjects.lifecycle(call_id)
    started = CallStarted(
        call_id=call_id, robot=robot, channel=channel, caller=caller, sample_rate=8000, ts_ms=start_ms
    )
    events: list[tuple[str, Message]] = [(lc, started)]
    if ended:
        events.append(
            (lc, CallEnded(call_id=call_id, reason="hangup", duration_ms=900, ts_ms=start_ms + 900))
        )
    return events


async def list_ids(client: httpx.AsyncClient, **params: str) -> list[str]:
    response = await client.get("/calls", params=params)
    assert response.status_code == 200, response.text
    return [c["call_id"] for c in response.json()["calls"]]


async def test_calls_list_filters_and_keyset_pagination(
    gateway_bus: NatsBus, js_nats_url: str, recorder: RecorderService
) -> None:
    full = new_call_id()
    a, b, c, e, f = (new_call_id() for _ in range(5))
    played: list[tuple[str, Message]] = [
        *call_sequence(full),  # demo, web, +7999, started T0, ended
        *short_call(a, "alpha", "web", "", T0 + 1000, ended=True),
        *short_call(b, "beta", "phone", "+7111", T0 + 2000, ended=False),
        *short_call(c, "alpha", "phone", "+7111", T0 + 3000, ended=True),
        # two calls started in the same millisecond: pages must neither skip nor repeat one
        *short_call(e, "beta", "web", "", T0 + 4000, ended=False),
        *short_call(f, "beta", "web", "", T0 + 4000, ended=False),
    ]
    await play(gateway_bus, played)
    await settle(recorder, js_nats_url, len(played))
    tied = sorted([e, f], reverse=True)
    latest_first = [*tied, c, b, a, full]

    async with client_of(app_of(recorder)) as client:
        response = await client.get("/calls")
        assert response.status_code == 200
        body = response.json()
        assert [x["call_id"] for x in body["calls"]] == latest_first
        assert (body["limit"], body["next_before"], body["next_before_id"]) == (50, None, None)
        row = body["calls"][-1]
        assert row == {
            "call_id": full, "robot": "demo", "channel": "web", "caller": "+7999", "mode": "pipeline",
            "status": "ended", "started_at": iso_ms(T0), "ended_at": iso_ms(T0 + 12_500),
            "duration_sec": 12.5, "turns": 2, "barge_ins": 1, "errors": 1, "last_prompt": "sales",
            "voice_to_voice_p50_ms": 1100, "voice_to_voice_max_ms": 1100, "end_reason": "hangup",
        }  # fmt: skip

        assert await list_ids(client, robot="alpha") == [c, a]
        assert await list_ids(client, status="active") == [*tied, b]
        assert await list_ids(client, caller="+7111") == [c, b]
        assert await list_ids(client, channel="phone") == [c, b]
        assert await list_ids(client, robot="beta", status="active", channel="web") == tied
        assert await list_ids(client, robot="nobody") == []
        assert await list_ids(client, before=str(T0 + 3000)) == [b, a, full]
        iso_z = datetime.fromtimestamp((T0 + 2000) / 1000, UTC).isoformat().replace("+00:00", "Z")
        assert await list_ids(client, before=iso_z) == [a, full]
        assert await list_ids(client, status="ended", before=str(T0 + 3000)) == [a, full]

        for limit in (1, 2, 4):
            seen: list[str] = []
            params = {"limit": str(limit)}
            while True:
                page = (await client.get("/calls", params=params)).json()
                assert len(page["calls"]) <= limit
                seen += [x["call_id"] for x in page["calls"]]
                if page["next_before"] is None:
                    break
                params = {
                    "limit": str(limit),
                    "before": page["next_before"],
                    "before_id": page["next_before_id"],
                }
            assert seen == latest_first, f"limit {limit}"

        # a page of a filtered list goes on with the same filter
        first = (await client.get("/calls", params={"robot": "beta", "limit": "1"})).json()
        rest = await list_ids(
            client, robot="beta", before=first["next_before"], before_id=first["next_before_id"]
        )
        assert [first["calls"][0]["call_id"], *rest] == [*tied, b]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=abc", "limit must be a whole number from 1 to 500"),
        ("limit=0", "limit must be a whole number"),
        ("limit=-5", "limit must be a whole number"),
        ("limit=2.5", "limit must be a whole number"),
        ("status=gone", "status must be one of active, ended"),
        ("channel=fax", "channel must be one of web, phone"),
        ("before=yesterday", "before must be Unix milliseconds or an ISO 8601 time"),
        ("before_id=x", "before_id needs before"),
        ("robt=demo", "unknown query parameter 'robt'"),
        ("robot=a&robot=b", "given more than once"),
    ],
)
async def test_bad_list_parameters_are_400_before_postgres_is_asked(
    settings: RecorderSettings, query: str, message: str
) -> None:
    # PostgreSQL is out of reach: a 400 shows the request was refused before any query
    closed = settings.model_copy(
        update={"postgres_dsn": SecretStr(f"postgresql://postgres@127.0.0.1:{free_port()}/test")}
    )
    api = RecorderApi(closed)
    try:
        async with client_of(build_api(api)) as client:
            response = await client.get(f"/calls?{query}")
        assert response.status_code == 400
        assert message in response.json()["error"]
    finally:
        await api.aclose()


async def test_transcript_and_turns_from_the_stream_then_from_postgres(
    gateway_bus: NatsBus,
    js_nats_url: str,
    recorder: RecorderService,
    settings: RecorderSettings,
) -> None:
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    await settle(recorder, js_nats_url, len(events))
    t1, t2 = f"{call_id}-t1", f"{call_id}-t2"

    async with client_of(app_of(recorder)) as client:
        response = await client.get(f"/calls/{call_id}")
        assert response.status_code == 200 and response.headers["vp-source"] == "stream"
        from_stream: dict[str, Any] = response.json()
        assert (from_stream["call_id"], from_stream["status"], from_stream["robot"]) == (
            call_id,
            "ended",
            "demo",
        )
        assert [(s["role"], s["turn_id"]) for s in from_stream["segments"]] == [
            ("user", t1), ("assistant", t1), ("user", t2), ("assistant", t2),
        ]  # fmt: skip
        bot1, bot2 = from_stream["segments"][1], from_stream["segments"][3]
        assert (bot1["asr_latency_ms"], bot1["llm_latency_ms"], bot1["tts_latency_ms"]) == (700, 200, 100)
        assert bot1["voice_to_voice_ms"] == 1100 and bot1["interrupted"] is False
        assert (bot2["interrupted"], bot2["played_text"], bot2["prompt"]) == (True, "Отлично,", "sales")
        assert from_stream["segments"][0]["asr_latency_ms"] == 700
        assert len(from_stream["pipeline_log"]) == len(events)
        assert [(e["stage"], e["kind"]) for e in from_stream["metadata"]["stage_errors"]] == [
            ("tts", "timeout")
        ]

        response = await client.get(f"/calls/{call_id}/turns")
        assert response.status_code == 200
        turns = response.json()["turns"]
        assert [t["turn_id"] for t in turns] == [t1, t2]
        assert turns[0] | {"speech_end_at": None} == {
            "turn_id": t1, "user_text": "здравствуйте", "bot_text": "Добрый день! Чем помочь?",
            "interrupted": False, "played_text": "", "speech_end_at": None,
            "asr_ms": 700, "llm_first_sentence_ms": 900, "tts_first_audio_ms": 1000,
            "voice_to_voice_ms": 1100,
            "asr_latency_ms": 700, "llm_latency_ms": 200, "tts_latency_ms": 100,
            "asr_provider": "", "llm_provider": "", "prompt_tokens": 0, "completion_tokens": 0,
        }  # fmt: skip
        assert turns[0]["speech_end_at"] == iso_ms(T0 + 1000)
        assert (turns[1]["interrupted"], turns[1]["played_text"], turns[1]["asr_ms"]) == (
            True,
            "Отлично,",
            600,
        )

        nc = await nats.connect(js_nats_url)
        try:
            js = nc.jetstream()
            # the first events of the call age out of the stream: the rest is merged with PostgreSQL
            first_seq = from_stream["pipeline_log"][0]["seq"]
            await js.purge_stream(settings.stream_name, seq=first_seq + 3)
            response = await client.get(f"/calls/{call_id}")
            assert response.status_code == 200 and response.headers["vp-source"] == "stream+postgres"
            assert response.json() == from_stream

            # the whole stream is gone: PostgreSQL call_events alone rebuild the same document
            await js.delete_stream(settings.stream_name)
        finally:
            await nc.close()
        response = await client.get(f"/calls/{call_id}")
        assert response.status_code == 200 and response.headers["vp-source"] == "postgres"
        assert response.json() == from_stream

        response = await client.get(f"/calls/{new_call_id()}")
        assert response.status_code == 404 and "no call" in response.json()["error"]


async def test_the_app_served_before_start_reads_postgres_next_to_health(
    gateway_bus: NatsBus,
    js_nats_url: str,
    recorder: RecorderService,
    settings: RecorderSettings,
) -> None:
    """The runner builds the HTTP app before it starts the service: no stream reader yet."""
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    await settle(recorder, js_nats_url, len(events))

    not_started = RecorderService(settings)
    app = build_http_app(not_started, [], {"phase": "starting"})
    try:
        async with client_of(app) as client:
            health = await client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "starting"
            response = await client.get(f"/calls/{call_id}")
            assert response.status_code == 200 and response.headers["vp-source"] == "postgres"
            assert len(response.json()["segments"]) == 4
            # not in PostgreSQL, and the stream cannot be asked yet: unknown, not absent
            response = await client.get(f"/calls/{new_call_id()}")
            assert response.status_code == 503
    finally:
        await not_started.drain(1.0)
    async with client_of(app) as client:
        response = await client.get("/calls")
    assert response.status_code == 503 and response.json() == {"error": "the recorder is shutting down"}


async def test_bad_ids_unknown_calls_and_routes(recorder: RecorderService) -> None:
    unknown = new_call_id()
    async with client_of(app_of(recorder)) as client:
        for path in ("/calls/bad.id", "/calls/a%20b", f"/calls/{'x' * 129}", "/calls/bad.id/turns"):
            response = await client.get(path)
            assert response.status_code == 400, path
            assert "call_id must be" in response.json()["error"]
        assert (await client.get(f"/calls/{unknown}")).status_code == 404
        response = await client.get(f"/calls/{unknown}/turns")
        assert response.status_code == 404 and response.json() == {
            "error": f"no call {unknown!r} in postgres"
        }
        assert (await client.get("/scenarios/demo/no-such-prompt")).status_code == 404
        response = await client.get("/nothing-here")
        assert response.status_code == 404 and response.json() == {"error": "Not Found"}
        assert (await client.post("/calls")).status_code == 405
        response = await client.get("/calls", params={"limit": str(MAX_LIMIT * 10)})
        assert response.status_code == 200 and response.json()["limit"] == MAX_LIMIT


async def test_postgres_unreachable_is_503_and_the_api_recovers(
    gateway_bus: NatsBus,
    js_nats_url: str,
    postgres_dsn: str,
    settings: RecorderSettings,
    start_recorder: StartRecorder,
    make_gate: Callable[[str], Awaitable[TcpGate]],
) -> None:
    gate = await make_gate(postgres_dsn)  # closed: PostgreSQL cannot be reached
    gated_dsn = gate.url_via_gate(postgres_dsn)
    service = await start_recorder(settings.model_copy(update={"postgres_dsn": SecretStr(gated_dsn)}))
    call_id = new_call_id()
    events = call_sequence(call_id)
    await play(gateway_bus, events)
    while await stream_messages(js_nats_url, settings.stream_name) < len(events):
        await asyncio.sleep(0.02)

    with capture_logs() as logs:
        async with client_of(app_of(service)) as client:
            for path in (
                "/calls",
                f"/calls/{call_id}/turns",
                f"/calls/{new_call_id()}",
                "/scenarios/demo/default",
            ):
                response = await client.get(path)
                assert response.status_code == 503, path
                assert response.headers["retry-after"] == "5"
                assert "postgres" in response.json()["error"]
                assert str(gate.port) not in response.text and "postgresql://" not in response.text
            # the stream alone still answers for a call it holds
            response = await client.get(f"/calls/{call_id}")
            assert response.status_code == 200 and response.headers["vp-source"] == "stream"

            await gate.open()
            await settle(service, js_nats_url, len(events))
            assert call_id in await list_ids(client)

            await gate.close()  # an outage with the pool already made: its connections are cut
            response = await client.get("/calls")
            assert response.status_code == 503 and response.json() == {"error": "postgres is unavailable"}

            await gate.open()
            assert call_id in await list_ids(client)
    assert any(entry["event"] == "recorder_api.postgres_unavailable" for entry in logs)
    assert all(gated_dsn not in json.dumps(entry, default=str) for entry in logs)


async def test_scenarios_fill_the_redis_cache_then_hit_it(
    recorder: RecorderService,
    settings: RecorderSettings,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    # Redis is shared: the cache assertions use a robot of this test's own
    robot = f"apitest_{uuid.uuid4().hex[:10]}"
    await sync_scenarios(pg, ROBOTS)
    await sync_scenarios(pg, copy_robots(tmp_path, rename={"topic_prompts_russian": robot}))
    key = scenario_key(robot, "pets")
    try:
        async with client_of(app_of(recorder)) as client:
            response = await client.get("/scenarios/pipeline_russian/default")
            assert response.status_code == 200 and response.json()["config"]["prompt"]

            assert await redis_client.exists(key) == 0
            response = await client.get(f"/scenarios/{robot}/pets")
            assert response.status_code == 200
            first = response.json()
            assert (first["robot"], first["name"]) == (robot, "pets")
            assert len(first["content_sha256"]) == 64 and first["config"]["prompt"]
            assert json.loads(await redis_client.get(key) or "null") == first
            assert SCENARIO_TTL_S - 10 < await redis_client.ttl(key) <= SCENARIO_TTL_S

            # a hit: the changed row is not seen until the entry expires (or is dropped)
            await pg.execute(
                "UPDATE scenarios SET config = '{}'::jsonb WHERE robot = $1 AND name = 'pets'", robot
            )
            assert (await client.get(f"/scenarios/{robot}/pets")).json() == first
            await redis_client.delete(key)
            assert (await client.get(f"/scenarios/{robot}/pets")).json()["config"] == {}

        # the cache answers while PostgreSQL is down; what it does not hold is a 503
        down = RecorderApi(
            settings.model_copy(
                update={"postgres_dsn": SecretStr(f"postgresql://postgres@127.0.0.1:{free_port()}/test")}
            )
        )
        try:
            async with client_of(build_api(down)) as client:
                response = await client.get(f"/scenarios/{robot}/pets")
                assert response.status_code == 200 and response.json()["config"] == {}
                assert (await client.get(f"/scenarios/{robot}/earning")).status_code == 503
        finally:
            await down.aclose()
    finally:
        async for found in redis_client.scan_iter(match=f"scenario:{robot}:*"):
            await redis_client.delete(found)
        await redis_client.delete(scenario_key("pipeline_russian", "default"))
