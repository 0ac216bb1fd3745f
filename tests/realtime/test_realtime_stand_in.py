"""Self-tests of the Realtime stand-in (tests/stand_ins/realtime_server.py) with a raw websockets client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.stand_ins.realtime_server import VALID_KEY, RealtimeStandIn
from tests.stand_ins.realtime_vad import EnergyVad, text_deltas

RATE = 24000
REPLY = "Здравствуйте! Чем могу помочь? Я слушаю вас."
GA_UPDATE: dict[str, Any] = {
    "type": "realtime",
    "instructions": "Ты вежливый оператор.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300},
            "transcription": {"model": "gpt-4o-transcribe"},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}


def tone(ms: int, amplitude: int = 8000) -> bytes:
    t = np.arange(RATE * ms // 1000) / RATE
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


def auth(flavor: str, key: str = VALID_KEY) -> dict[str, str]:
    return {"Authorization": f"api-key {key}" if flavor == "yandex" else f"Bearer {key}"}


@asynccontextmanager
async def client(
    server: RealtimeStandIn, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    async with connect(server.url, additional_headers=headers or auth(server.flavor), proxy=None) as ws:
        yield ws


async def send(ws: ClientConnection, type_: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": type_, **fields}, ensure_ascii=False))


async def send_audio(ws: ClientConnection, pcm: bytes, chunk_ms: int = 20) -> None:
    step = RATE * chunk_ms // 1000 * 2
    for i in range(0, len(pcm), step):
        await send(ws, "input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + step]).decode())


async def recv(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert event["event_id"].startswith("event_")
    return event


async def until(ws: ClientConnection, type_: str, timeout: float = 3.0) -> list[dict[str, Any]]:
    """Every event up to and including the first ``type_``."""
    events = [await recv(ws, timeout)]
    while events[-1]["type"] != type_:
        events.append(await recv(ws, timeout))
    return events


async def updated(ws: ClientConnection, session: dict[str, Any]) -> dict[str, Any]:
    await until(ws, "session.created")
    await send(ws, "session.update", session=session)
    event = await recv(ws)
    assert event["type"] == "session.updated", event
    return event


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# ---- handshake -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavor", "header"),
    [("yandex", None), ("yandex", "api-key wrong"), ("yandex", f"Bearer {VALID_KEY}"),
     ("openai", None), ("openai", f"api-key {VALID_KEY}"), ("openai", "Bearer wrong")],
)  # fmt: skip
async def test_wrong_or_missing_key_is_refused_with_401(flavor: str, header: str | None) -> None:
    async with RealtimeStandIn(flavor) as server:  # type: ignore[arg-type]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                server.url, additional_headers={"Authorization": header} if header else {}, proxy=None
            ):
                pass
        assert refused.value.response.status_code == 401
        body = json.loads(refused.value.response.body)
        assert body["error"]["httpCode" if flavor == "yandex" else "code"] in (401, "invalid_api_key")
        assert [h.status for h in server.handshakes] == [401]
        assert server.sessions == []


@pytest.mark.parametrize("scheme", ["api-key", "Api-Key", "API-KEY"])
async def test_yandex_accepts_the_scheme_in_any_case_and_records_headers(scheme: str) -> None:
    async with RealtimeStandIn("yandex") as server:
        headers = {"Authorization": f"{scheme} {VALID_KEY}", "x-folder-id": "b1gstandin"}
        async with client(server, headers) as ws:
            created = await recv(ws)
        assert created["type"] == "session.created"
        assert created["session"]["id"] == server.sessions[0].id
        assert server.handshakes[0].status == 101
        assert server.handshakes[0].headers["x-folder-id"] == "b1gstandin"
        assert server.handshakes[0].path.startswith(
            "/v1/realtime/openai?model=gpt://b1gstandin/speech-realtime-"
        )


@pytest.mark.parametrize(
    ("knobs", "status"),
    [({"forbidden": True}, 403), ({"rate_limited": True}, 429), ({"http_status": 503}, 503)],
)
async def test_fault_knobs_refuse_the_upgrade(knobs: dict[str, Any], status: int) -> None:
    async with RealtimeStandIn("openai", **knobs) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with client(server):
                pass
        assert refused.value.response.status_code == status


async def test_yandex_accepts_a_bearer_iam_token_when_configured() -> None:
    async with RealtimeStandIn("yandex", iam_token="t1.iam-token") as server:
        async with client(server, {"Authorization": "Bearer t1.iam-token"}) as ws:
            assert (await recv(ws))["type"] == "session.created"
        with pytest.raises(InvalidStatus) as refused:
            async with client(server, {"Authorization": "Bearer other"}):
                pass
        assert refused.value.response.status_code == 401
        assert [h.status for h in server.handshakes] == [101, 401]


async def test_wrong_path_and_model_are_refused() -> None:
    async with RealtimeStandIn("yandex") as server:
        for path, status in [("/v1/realtime?model=x", 404), ("/v1/realtime/openai?model=gpt-realtime", 400)]:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.base_url + path, additional_headers=auth("yandex"), proxy=None):
                    pass
            assert refused.value.response.status_code == status


# ---- session.update ----------------------------------------------------------------------------------


async def test_openai_session_update_is_validated_and_echoed() -> None:
    async with RealtimeStandIn("openai", pace=0) as server, client(server) as ws:
        created = await recv(ws)
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        await send(ws, "session.update", event_id="client_1", session={**GA_UPDATE, "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}}}})  # fmt: skip
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["param"] == "session.audio.input.format.rate"
        assert error["error"]["event_id"] == "client_1"
        await send(ws, "session.update", session={"input_audio_format": "pcm16"})  # beta shape
        beta = await recv(ws)
        assert beta["type"] == "error"
        assert beta["error"]["code"] == "unknown_parameter"
        no_type = {k: v for k, v in GA_UPDATE.items() if k != "type"}
        await send(ws, "session.update", session=no_type)
        assert (await recv(ws))["error"]["param"] == "session.type"
        await send(ws, "session.update", session={**GA_UPDATE, "audio": {"output": {"format": {
            "type": "audio/pcm", "rate": 44100}}}})  # fmt: skip
        assert (await recv(ws))["error"]["param"] == "session.audio.output.format.rate"
        await send(ws, "session.update", session=GA_UPDATE)
        ok = await recv(ws)
        assert ok["type"] == "session.updated"
        assert ok["session"]["instructions"] == "Ты вежливый оператор."
        assert ok["session"]["audio"]["output"]["voice"] == "marin"
        assert ok["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        assert ok["session"]["audio"]["input"]["turn_detection"]["interrupt_response"] is True
        assert [e.type for e in server.received("session.update")] == ["session.update"] * 5


async def test_yandex_echoes_rate_null_and_sends_audio_at_its_output_rate() -> None:
    async with RealtimeStandIn("yandex", pace=0) as server, client(server) as ws:
        created = await recv(ws)
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": None}
        assert created["session"]["audio"]["output"]["format"]["rate"] is None
        update = {"instructions": "Отвечай коротко.", "output_modalities": ["text", "audio"], "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000, "channels": 1}},
            "output": {"format": {"type": "audio/pcm", "rate": 44100}, "voice": "dasha"}}}  # fmt: skip
        await send(ws, "session.update", session=update)
        ok = await recv(ws)
        assert ok["type"] == "session.updated"
        assert ok["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": None}
        assert server.sessions[0].config["audio"]["output"]["format"]["rate"] == 44100
        await send(
            ws,
            "session.update",
            session={"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
        )
        assert (await recv(ws))["error"]["param"] == "session.audio.input.format.rate"
        await send(ws, "response.create", response={"instructions": "Поздоровайся."})
        events = await until(ws, "response.done")
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
        )
        assert len(audio) == int(44100 * 1.2) * 2
        assert (
            len(base64.b64decode(events[types(events).index("response.output_audio.delta")]["delta"])) == 8820
        )
        assert events[-1]["response"]["status"] == "completed"


# ---- speech in, reply out ------------------------------------------------------------------------------


async def test_speech_turn_produces_vad_transcript_and_a_full_response() -> None:
    speech = silence(500) + tone(800) + silence(1000)
    async with (
        RealtimeStandIn("openai", pace=0, transcripts=["Добрый день."]) as server,
        client(server) as ws,
    ):
        await updated(ws, GA_UPDATE)
        await send_audio(ws, speech)
        events = await until(ws, "response.done")
        assert server.audio_received() == speech
    names = types(events)
    started, stopped = events[0], events[1]
    assert started == {**started, "type": "input_audio_buffer.speech_started", "audio_start_ms": 200}
    assert stopped == {**stopped, "type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1800}
    user_item = started["item_id"]
    assert stopped["item_id"] == user_item
    assert names[2:8] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
    ]
    assert events[2]["item_id"] == events[3]["item"]["id"] == events[4]["item_id"] == user_item
    assert events[3]["item"]["role"] == "user"
    assert events[4]["transcript"] == "Добрый день." and events[4]["content_index"] == 0
    response_id = events[5]["response"]["id"]
    assert events[5]["response"]["status"] == "in_progress"
    assistant = events[6]["item"]
    assert (assistant["type"], assistant["role"]) == ("message", "assistant")
    audio_deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert text == REPLY
    assert len(audio_deltas) == 12  # 1.2 s in 100 ms chunks
    for delta in audio_deltas:
        assert delta == {**delta, "response_id": response_id, "item_id": assistant["id"], "output_index": 0,
                         "content_index": 0}  # fmt: skip
    assert sum(len(base64.b64decode(d["delta"])) for d in audio_deltas) == int(RATE * 1.2) * 2
    first_text = names.index("response.output_audio_transcript.delta")
    assert names.index("response.output_audio.delta") < names.index(
        "response.output_audio_transcript.delta", first_text + 1
    )  # interleaved
    assert names[-5:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    assert events[-4]["transcript"] == REPLY
    done = events[-1]["response"]
    assert done["id"] == response_id and done["status"] == "completed"
    usage = done["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    # 1.8 s committed (up to speech_stopped; what came after is still in the buffer) at ~10 tokens/s
    assert usage["input_token_details"]["audio_tokens"] == 18
    assert usage["output_token_details"]["audio_tokens"] == 24  # 1.2 s of output at 20 tokens/s
    assert usage["output_token_details"]["text_tokens"] == len(REPLY.split())


async def test_yandex_names_items_created_and_transcribes_unasked() -> None:
    async with RealtimeStandIn("yandex", pace=0) as server, client(server) as ws:
        await until(ws, "session.created")
        await send_audio(ws, tone(400) + silence(600))
        events = await until(ws, "response.done")
        assert server.received("input_audio_buffer.append")
    names = types(events)
    assert "conversation.item.added" not in names
    assert names.count("conversation.item.created") == 2  # the user's item and the assistant's
    assert names.index("conversation.item.input_audio_transcription.completed") < names.index(
        "response.created"
    )


async def test_openai_sends_no_transcript_unless_transcription_is_configured() -> None:
    async with RealtimeStandIn("openai", pace=0) as server, client(server) as ws:
        await updated(ws, {"type": "realtime"})
        await send_audio(ws, tone(400) + silence(600))
        events = await until(ws, "response.done")
        assert server.sent("input_audio_buffer.committed")
    assert "conversation.item.input_audio_transcription.completed" not in types(events)


async def test_transcript_can_arrive_after_the_response_started() -> None:
    async with RealtimeStandIn("yandex", pace=0.5, transcript_delay_s=0.3) as server, client(server) as ws:
        await until(ws, "session.created")
        await send_audio(ws, tone(400) + silence(600))
        names = types(await until(ws, "response.done"))
        assert len(server.sent("response.output_audio.delta")) == 12
    transcribed = names.index("conversation.item.input_audio_transcription.completed")
    assert names.index("response.created") < names.index("response.output_audio.delta") < transcribed


async def test_audio_is_paced_in_real_time_by_default() -> None:
    async with RealtimeStandIn("openai", reply_audio_s=0.5) as server, client(server) as ws:
        await until(ws, "session.created")
        loop = asyncio.get_running_loop()
        await send(ws, "response.create")
        await until(ws, "response.output_audio.delta")
        first = loop.time()
        await until(ws, "response.done")
        elapsed = loop.time() - first
        assert len(server.sent("response.output_audio.delta")) == 5
    assert 0.35 <= elapsed < 1.0  # 4 gaps of 100 ms after the first chunk


async def test_manual_commit_without_vad() -> None:
    async with RealtimeStandIn("openai", pace=0) as server, client(server) as ws:
        update = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        assert (await updated(ws, update))["session"]["audio"]["input"]["turn_detection"] is None
        await send_audio(ws, silence(60))
        await send(ws, "input_audio_buffer.commit")
        error = await recv(ws)
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        await send_audio(ws, tone(500))
        await send(ws, "input_audio_buffer.commit")
        assert types(await until(ws, "conversation.item.added"))[0] == "input_audio_buffer.committed"
        await send(ws, "input_audio_buffer.clear")
        assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
        assert not server.sent("input_audio_buffer.speech_started")
        assert not server.sent("response.created")  # no VAD: no automatic response


# ---- barge-in, cancel, truncate --------------------------------------------------------------------------


async def test_barge_in_cancels_the_running_response() -> None:
    async with RealtimeStandIn("openai", reply_audio_s=5.0) as server, client(server) as ws:
        await updated(ws, GA_UPDATE)
        await send_audio(ws, tone(300) + silence(600))
        await until(ws, "response.output_audio.delta")
        await send_audio(ws, tone(100))  # the caller talks over the robot
        events = await until(ws, "response.done")
        await send(ws, "response.cancel")  # nothing is active any more
        error = await recv(ws)
        assert server.sent("response.output_audio.delta")
    names = types(events)
    assert names.index("input_audio_buffer.speech_started") < names.index("response.done")
    after_start = names[names.index("input_audio_buffer.speech_started") :]
    assert "response.output_audio.delta" not in after_start
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert [c.reason for c in server.cancels] == ["turn_detected"]
    assert 0 < server.cancels[0].audio_ms_sent < 5000
    assert error["error"] == {
        **error["error"],
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
    }


async def test_no_barge_in_when_interrupt_response_is_off() -> None:
    update = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
              "interrupt_response": False, "silence_duration_ms": 200}}}}  # fmt: skip
    async with RealtimeStandIn("openai", reply_audio_s=1.0, pace=0.5) as server, client(server) as ws:
        await updated(ws, update)
        await send_audio(ws, tone(300) + silence(300))
        await until(ws, "response.output_audio.delta")
        await send_audio(ws, tone(100))
        events = await until(ws, "response.done")
        assert server.cancels == []
    assert "input_audio_buffer.speech_started" in types(events)
    assert events[-1]["response"]["status"] == "completed"


async def test_client_cancel_and_a_second_response_create_while_active() -> None:
    async with RealtimeStandIn("openai", reply_audio_s=3.0) as server, client(server) as ws:
        await until(ws, "session.created")
        await send(ws, "response.create", response={"instructions": "Поздоровайся с клиентом."})
        created = (await until(ws, "response.created"))[-1]
        await send(ws, "response.create")
        busy = await until(ws, "error")
        assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"
        await send(ws, "response.cancel")
        done = (await until(ws, "response.done"))[-1]["response"]
        assert (
            server.received("response.create")[0]
            .payload["response"]["instructions"]
            .startswith("Поздоровайся")
        )
    assert done["id"] == created["response"]["id"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "client_cancelled")
    assert [c.reason for c in server.cancels] == ["client_cancelled"]


async def test_truncate_is_validated_against_the_audio_sent() -> None:
    async with RealtimeStandIn("openai", pace=0, reply_audio_s=1.0) as server, client(server) as ws:
        await updated(ws, GA_UPDATE)
        await send_audio(ws, tone(300) + silence(600))
        events = await until(ws, "response.done")
        user_item = events[0]["item_id"]
        assistant = next(e["item"]["id"] for e in events if e["type"] == "response.output_item.added")
        bad = [
            {"item_id": "item_nope", "content_index": 0, "audio_end_ms": 100},
            {"item_id": user_item, "content_index": 0, "audio_end_ms": 100},
            {"item_id": assistant, "content_index": 0, "audio_end_ms": 1001},
            {"item_id": assistant, "content_index": 0, "audio_end_ms": -5},
        ]
        errors = []
        for fields in bad:
            await send(ws, "conversation.item.truncate", **fields)
            errors.append((await recv(ws))["error"])
        await send(ws, "conversation.item.truncate", item_id=assistant, content_index=0, audio_end_ms=640)
        truncated = await recv(ws)
    assert [e["type"] for e in errors] == ["invalid_request_error"] * 4
    assert errors[0]["code"] == "item_truncate_invalid_item_id"
    assert errors[1]["message"] == "Only assistant messages can be truncated."
    assert errors[2]["message"] == "Audio content of 1000ms is already shorter than 1001ms"
    assert errors[3]["param"] == "audio_end_ms"
    assert truncated == {
        **truncated,
        "type": "conversation.item.truncated",
        "item_id": assistant,
        "audio_end_ms": 640,
    }
    assert [(t.item_id, t.audio_end_ms) for t in server.truncations] == [(assistant, 640)]


async def test_client_items_are_echoed_with_the_flavor_event_name() -> None:
    for flavor, name in (("yandex", "conversation.item.created"), ("openai", "conversation.item.added")):
        async with RealtimeStandIn(flavor, pace=0) as server, client(server) as ws:  # type: ignore[arg-type]
            await until(ws, "session.created")
            item = {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'}
            await send(ws, "conversation.item.create", item=item)
            echoed = await recv(ws)
            assert echoed["type"] == name
            assert echoed["item"]["call_id"] == "call_1" and echoed["item"]["id"].startswith("item_")
            await send(
                ws,
                "conversation.item.truncate",
                item_id=echoed["item"]["id"],
                content_index=0,
                audio_end_ms=0,
            )
            assert (await recv(ws))["error"]["message"] == "Only assistant messages can be truncated."
            assert server.received("conversation.item.create")[0].payload["item"] == item


# ---- strictness and faults -------------------------------------------------------------------------------


async def test_bad_base64_is_an_error_and_the_session_stays_open() -> None:
    async with RealtimeStandIn("openai", pace=0) as server, client(server) as ws:
        await until(ws, "session.created")
        await send(ws, "input_audio_buffer.append", audio="%%%not base64%%%")
        await send(ws, "input_audio_buffer.append", audio=base64.b64encode(b"\x01\x02\x03").decode())  # odd
        await ws.send("{not json")
        await send(ws, "conversation.item.frobnicate")
        errors = [await recv(ws) for _ in range(4)]
        await send(ws, "response.create")
        assert (await until(ws, "response.done"))[-1]["response"]["status"] == "completed"
        assert server.audio_received() == b""
    assert [e["error"]["code"] for e in errors] == [
        "invalid_value",
        "invalid_value",
        "invalid_json",
        "invalid_value",
    ]


async def test_fail_after_response_created_sends_server_error_and_closes_1011() -> None:
    async with RealtimeStandIn("openai", fail_after_response_created=True) as server, client(server) as ws:
        await until(ws, "session.created")
        await send(ws, "response.create")
        assert (await recv(ws))["type"] == "response.created"
        error = await recv(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        await server.sessions[0].closed.wait()
    assert error["error"]["type"] == "server_error"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert not server.closed.is_set()  # the server closed it, not the client


@pytest.mark.parametrize("code", [1011, 1006])
async def test_close_mid_audio(code: int) -> None:
    async with (
        RealtimeStandIn("openai", pace=0, close_mid_audio=True, close_code=code) as server,
        client(server) as ws,
    ):
        await until(ws, "session.created")
        await send(ws, "response.create")
        with pytest.raises(ConnectionClosed) as closed:
            await until(ws, "response.done")
        assert len(server.sent("response.output_audio.delta")) == 6  # half of 1.2 s
    if code == 1006:
        assert closed.value.rcvd is None  # no close frame: the TCP connection dropped
    else:
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_malformed_frame_after_session_created() -> None:
    async with RealtimeStandIn("yandex", malformed=True) as server, client(server) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        with pytest.raises(json.JSONDecodeError):
            json.loads(await ws.recv())
        assert len(server.sessions) == 1


async def test_stall_records_but_never_answers() -> None:
    async with RealtimeStandIn("openai", stall=True) as server, client(server) as ws:
        await until(ws, "session.created")
        await send(ws, "session.update", session=GA_UPDATE)
        await send_audio(ws, tone(300) + silence(600))
        await send(ws, "response.create")
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.3)
        assert [e.type for e in server.received()][-1] == "response.create"
        assert len(server.audio_received()) == len(tone(300) + silence(600))


async def test_client_close_is_recorded_with_its_time() -> None:
    async with RealtimeStandIn("yandex") as server:
        async with client(server) as ws:
            await until(ws, "session.created")
        await asyncio.wait_for(server.closed.wait(), 3)
        assert server.closed.at is not None
        assert server.sessions[0].closed.at is not None


async def test_concurrent_sessions_keep_their_own_state() -> None:
    async with RealtimeStandIn("openai", pace=0, replies=["Первый.", "Второй."]) as server:
        async with client(server) as a, client(server) as b:
            await until(a, "session.created")
            await until(b, "session.created")
            await send_audio(a, tone(300) + silence(600))
            await send_audio(b, tone(600) + silence(600))
            done_a, done_b = await asyncio.gather(until(a, "response.done"), until(b, "response.done"))
        assert {len(server.audio_received(0)), len(server.audio_received(1))} == {
            len(tone(300) + silence(600)), len(tone(600) + silence(600))}  # fmt: skip
    ids = {e["response"]["id"] for e in (done_a[-1], done_b[-1])}
    assert len(ids) == 2
    texts = {e["transcript"] for e in done_a + done_b if e["type"] == "response.output_audio_transcript.done"}
    assert texts == {"Первый.", "Второй."}
    assert len({s.id for s in server.sessions}) == 2


# ---- helpers -----------------------------------------------------------------------------------------------


def test_vad_gives_the_same_events_whatever_the_chunking() -> None:
    pcm = silence(500) + tone(800) + silence(1000) + tone(200) + silence(700)
    whole = EnergyVad(500, 500, 300).feed(pcm)
    pieces = EnergyVad(500, 500, 300)
    odd = [event for i in range(0, len(pcm), 333) for event in pieces.feed(pcm[i : i + 333])]
    assert whole == odd
    assert [(e.kind, e.ms) for e in whole] == [
        ("started", 200),
        ("stopped", 1800),
        ("started", 2000),
        ("stopped", 3000),  # 2300–2500 ms tone + 500 ms silence
    ]


def test_text_deltas_join_back_to_the_text() -> None:
    for n in (1, 3, 12, 40):
        deltas = text_deltas(REPLY, n)
        assert len(deltas) == n
        assert "".join(deltas) == REPLY
