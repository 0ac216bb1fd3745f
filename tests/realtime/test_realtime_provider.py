"""The realtime client against the protocol stand-in, for both vendors: handshake, errors, faults."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from tests.realtime.test_realtime_call import make_robot
from tests.stand_ins.realtime_server import RealtimeStandIn
from voiceplatform.config import load_robot
from voiceplatform.logging import SecretMaskingFilter
from voiceplatform.providers import ProviderConnectionError, ProviderError, ProviderTimeoutError
from voiceplatform.providers.realtime import (
    AudioDelta,
    InputTranscript,
    ProviderNotice,
    RealtimeConnection,
    RealtimeEvent,
    RealtimeSessionConfig,
    ResponseDone,
    ResponseItem,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
)
from vp_realtime.providers import RealtimeEndpoint, build_endpoint

Flavor = Literal["yandex", "openai"]
FLAVORS: list[Flavor] = ["yandex", "openai"]
CONFIG = RealtimeSessionConfig(instructions="Будь краток.", voice="", silence_duration_ms=300)


def endpoint(server: RealtimeStandIn, tmp_path: Path, key: str | None = None) -> RealtimeEndpoint:
    robot = load_robot(make_robot(tmp_path, server, **({"key": key} if key else {})))
    return build_endpoint(robot)


def speech_24k(seconds: float) -> bytes:
    t = np.arange(int(24000 * seconds)) / 24000
    return (np.sin(2 * np.pi * 300 * t) * 4000).astype(np.int16).tobytes()


async def collect_until(conn: RealtimeConnection, kind: type, timeout: float = 5.0) -> list[RealtimeEvent]:
    seen: list[RealtimeEvent] = []

    async def run() -> None:
        async for event in conn.events():
            seen.append(event)
            if isinstance(event, kind):
                return

    await asyncio.wait_for(run(), timeout)
    return seen


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_one_turn_streams_vad_transcripts_audio_and_usage(flavor: Flavor, tmp_path: Path) -> None:
    async with RealtimeStandIn(flavor=flavor, reply_audio_s=0.5, pace=0) as server:
        conn = await endpoint(server, tmp_path).connect(CONFIG)
        try:
            await conn.append_audio(speech_24k(0.5) + b"\0" * 24000)
            events = await collect_until(conn, ResponseDone)
        finally:
            await conn.aclose()

    kinds = [type(e) for e in events]
    assert kinds.index(SpeechStarted) < kinds.index(SpeechStopped) < kinds.index(ResponseItem)
    transcript = next(e for e in events if isinstance(e, InputTranscript))
    assert transcript.text == "Здравствуйте, я хочу записаться к врачу."
    # with both modalities on, Yandex sends text and audio transcripts: the words come once
    said = "".join(e.text for e in events if isinstance(e, TranscriptDelta))
    assert said == "Здравствуйте! Чем могу помочь? Я слушаю вас."
    audio = b"".join(e.pcm for e in events if isinstance(e, AudioDelta))
    assert len(audio) == 24000 * 2 // 2  # 0.5 s at 24 kHz
    done = events[-1]
    assert isinstance(done, ResponseDone) and done.status == "completed"
    assert done.input_tokens > 0 and done.output_tokens > 0
    update = server.received("session.update")[0].payload["session"]
    if flavor == "openai":
        assert server.handshakes[0].headers["authorization"].startswith("Bearer ")
        assert update["type"] == "realtime" and update["audio"]["input"]["transcription"]["model"]
    else:
        assert server.handshakes[0].headers["authorization"].startswith("api-key ")
        assert "type" not in update


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(
    ("knob", "status", "retryable"),
    [
        ({"forbidden": True}, 403, False),
        ({"rate_limited": True}, 429, True),
        ({"http_status": 500}, 500, True),
        ({"http_status": 503}, 503, True),
    ],
)
async def test_refused_handshakes_map_to_the_error_tree(
    flavor: Flavor, knob: dict[str, object], status: int, retryable: bool, tmp_path: Path
) -> None:
    async with RealtimeStandIn(flavor=flavor, **knob) as server:
        with pytest.raises(ProviderError) as raised:
            await endpoint(server, tmp_path).connect(CONFIG)
    assert getattr(raised.value, "status", None) == status and raised.value.retryable is retryable


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_wrong_key_is_401_not_retryable_and_never_shown(
    flavor: Flavor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-realtime-key-778899"
    caplog.set_level(logging.DEBUG)
    async with RealtimeStandIn(flavor=flavor) as server:
        with pytest.raises(ProviderError) as raised:
            await endpoint(server, tmp_path, key=wrong).connect(CONFIG)
    assert getattr(raised.value, "status", None) == 401 and not raised.value.retryable
    assert wrong not in str(raised.value)
    # websockets' own debug lines echo the header; the product's stdlib filter masks them
    client_lines = [r for r in caplog.records if r.name.startswith("websockets.client")]
    filtered = [r for r in client_lines if SecretMaskingFilter().filter(r)]
    assert filtered and not any(wrong in r.getMessage() for r in filtered)


async def test_a_silent_server_times_out_the_handshake(tmp_path: Path) -> None:
    async with RealtimeStandIn(flavor="yandex", stall=True) as server:
        ep = endpoint(server, tmp_path)
        ep.timeout_s = 0.4
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError):
            await ep.connect(CONFIG)
    assert time.monotonic() - started < 1.5


async def test_a_malformed_frame_is_a_notice_and_the_session_goes_on(tmp_path: Path) -> None:
    async with RealtimeStandIn(flavor="yandex", malformed=True, reply_audio_s=0.2, pace=0) as server:
        conn = await endpoint(server, tmp_path).connect(CONFIG)
        try:
            await conn.append_audio(speech_24k(0.4) + b"\0" * 24000)
            events = await collect_until(conn, ResponseDone)
        finally:
            await conn.aclose()
    notices = [e for e in events if isinstance(e, ProviderNotice)]
    assert [n.code for n in notices] == ["malformed_event"]
    assert isinstance(events[-1], ResponseDone)


async def test_a_server_error_mid_reply_raises_a_connection_error(tmp_path: Path) -> None:
    async with RealtimeStandIn(flavor="yandex", fail_after_response_created=True) as server:
        conn = await endpoint(server, tmp_path).connect(CONFIG)
        try:
            await conn.append_audio(speech_24k(0.4) + b"\0" * 24000)
            with pytest.raises(ProviderConnectionError) as raised:
                await collect_until(conn, ResponseDone)
        finally:
            await conn.aclose()
    assert "1011" in str(raised.value)


async def test_closing_the_session_is_seen_by_the_server_at_once_and_truncate_is_well_formed(
    tmp_path: Path,
) -> None:
    async with RealtimeStandIn(flavor="openai", reply_audio_s=3.0, pace=1.0) as server:
        conn = await endpoint(server, tmp_path).connect(CONFIG)
        await conn.append_audio(speech_24k(0.4) + b"\0" * 24000)
        events = await collect_until(conn, AudioDelta)
        item = next(e for e in events if isinstance(e, ResponseItem))
        await conn.cancel_response()
        await conn.truncate(item.item_id, 50)
        await asyncio.sleep(0.1)
        closing = time.monotonic()
        await conn.aclose()
        await asyncio.wait_for(server.closed.wait(), 1.0)
    assert server.closed.at is not None and server.closed.at - closing < 0.3
    assert [t.audio_end_ms for t in server.truncations] == [50]
    assert server.cancels and server.cancels[0].reason == "client_cancelled"
    sent = server.received("input_audio_buffer.append")[0].payload["audio"]
    assert base64.b64decode(sent)[:16] == speech_24k(0.4)[:16]
