"""The races of the real FreeSWITCH the peer reproduces on demand, and ``uuid_dump``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.fs_peer.helpers import PASSWORD, RawEsl, WsRecorder, parse_head, ramp_pcm
from voiceplatform_devstack import FreeSwitchPeer


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[FreeSwitchPeer]:
    async with FreeSwitchPeer(esl_password=PASSWORD, temp_dir=tmp_path / "fs-tmp") as fs:
        yield fs


@pytest.fixture
async def ws() -> AsyncIterator[WsRecorder]:
    async with WsRecorder() as server:
        yield server


@pytest.mark.parametrize("early", [1, 5])
async def test_audio_before_metadata_as_a_slow_handshake_sends_it(
    peer: FreeSwitchPeer, ws: WsRecorder, early: int
) -> None:
    meta = '{"dnis":"7000"}'
    call = await peer.place_call(
        ws.url, destination="7000", metadata=meta, early_frames=early, idle_silence=False
    )
    conn = await ws.accept()
    speech = ramp_pcm(0.2)  # 10 frames
    await call.stream_pcm(speech, realtime=False)
    await conn.wait_frames(10)
    kinds = [type(m) for _, m in conn.messages]
    assert kinds == [bytes] * early + [str] + [bytes] * (10 - early)  # N frames, then the metadata
    assert conn.texts == [meta]
    assert b"".join(m for _, m in conn.frames) == speech  # nothing lost or reordered
    await call.hangup()


async def test_the_peer_wide_knob_applies_to_every_new_stream(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    peer.early_audio_frames = 2
    call = await peer.place_call(ws.url, destination="7000", metadata="7000", idle_silence=False)
    conn = await ws.accept()
    await call.stream_pcm(ramp_pcm(0.1), realtime=False)
    await conn.wait_frames(5)
    assert [type(m) for _, m in conn.messages][:3] == [bytes, bytes, str]
    await call.hangup()


async def test_delayed_events_arrive_in_order_and_flush_delivers_them(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_PARK")
    peer.event_delay_s = 60.0  # held: a stream may reach the gateway before the channel's events
    call = await peer.place_call(None, destination="7000")
    with pytest.raises(TimeoutError):
        await esl.event("CHANNEL_CREATE", call.uuid, timeout=0.3)
    peer.flush_events()
    await esl.event("CHANNEL_PARK", call.uuid)  # the ones before it wait in esl.events, in arrival order
    assert [e.name for e in esl.events if e.headers.get("Unique-ID") == call.uuid] == [
        "CHANNEL_CREATE",
        "CHANNEL_ANSWER",
    ]
    await call.hangup()
    await esl.close()


async def test_uuid_dump_gives_the_channel_data_url_encoded(peer: FreeSwitchPeer) -> None:
    esl = await RawEsl.open(peer)
    call = await peer.place_call(None, destination="7000", caller="+7 999 000")
    dump = await esl.api(f"uuid_dump {call.uuid}")
    headers = {k: unquote(v) for k, v in parse_head(dump.encode()).items()}
    assert headers["Event-Name"] == "CHANNEL_DATA" and headers["Unique-ID"] == call.uuid
    assert headers["Caller-Caller-ID-Number"] == "+7 999 000" and "%20" in dump  # encoded on the wire
    assert headers["Caller-Destination-Number"] == "7000"
    assert (await esl.api("uuid_dump 0000-nope")).startswith("-ERR No such channel")
    await call.hangup()
    await esl.close()
    await asyncio.sleep(0)
