"""The FreeSWITCH peer's media: mod_audio_stream framing and pacing, playback, recording."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.fs_peer.helpers import PASSWORD, RawEsl, WsRecorder, ramp_pcm
from voiceplatform.audio import write_wav
from voiceplatform_devstack import FreeSwitchPeer


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[FreeSwitchPeer]:
    async with FreeSwitchPeer(esl_password=PASSWORD, temp_dir=tmp_path / "fs-tmp") as fs:
        yield fs


@pytest.fixture
async def ws() -> AsyncIterator[WsRecorder]:
    async with WsRecorder() as server:
        yield server


async def test_metadata_first_then_paced_20ms_frames(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    meta = '{"dnis":"7000","caller":"79990001122"}'
    call = await peer.place_call(ws.url + "/call/x", destination="7000", metadata=meta)
    conn = await ws.accept()
    assert conn.path == "/call/x"
    speech = ramp_pcm(1.0)
    await call.stream_pcm(speech)
    await conn.wait_frames(len(speech) // 320 + 5)
    _, first = conn.messages[0]
    assert first == meta  # the very first frame is the metadata text
    assert all(isinstance(m, bytes) and len(m) == 320 for _, m in conn.messages[1:])
    audio = b"".join(m for _, m in conn.frames)
    assert speech in audio  # in order, unaltered (silence frames around it)
    connect = peer.events_named("mod_audio_stream::connect", call.uuid)
    assert connect and json.loads(connect[0].body or "") == {"status": "connected"}
    # pacing: frame i arrives at start + 20 ms * i, without drift
    times = np.array([t for t, _ in conn.frames])
    lag = (times - times[0]) - np.arange(len(times)) * 0.02
    lag -= lag.min()
    p99 = float(np.percentile(lag, 99))
    print(f"frames={len(times)} lag p50={np.percentile(lag, 50) * 1000:.2f} ms p99={p99 * 1000:.2f} ms")
    assert p99 < 0.015
    assert abs((times[-1] - times[0]) - (len(times) - 1) * 0.02) < 0.03
    await call.hangup()
    await asyncio.wait_for(conn.closed.wait(), 3)
    assert conn.ws.close_code == 1000


@pytest.mark.parametrize(("stream_rate", "mix", "size"), [(16000, "mono", 640), (8000, "stereo", 640)])
async def test_stream_rate_and_mix_set_the_frame_size(
    peer: FreeSwitchPeer, ws: WsRecorder, stream_rate: int, mix: str, size: int
) -> None:
    call = await peer.place_call(
        ws.url, destination="7000", stream_rate=stream_rate, mix=mix, idle_silence=False
    )
    conn = await ws.accept()
    await call.stream_pcm(ramp_pcm(0.2), realtime=False)
    await conn.wait_frames(9)
    assert {len(m) for _, m in conn.frames} == {size}
    await call.hangup()


async def test_sendmsg_execute_playback_queues_like_broadcast(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE")
    call = await peer.place_call(ws.url, destination="7000")
    reply = await esl.command(
        f"sendmsg {call.uuid}\ncall-command: execute\nexecute-app-name: playback\n"
        "execute-app-arg: silence_stream://200\nevent-lock: true"
    )
    assert reply == "+OK"
    execute = await esl.event("CHANNEL_EXECUTE", call.uuid)
    assert execute.headers["Application"] == "playback"
    assert execute.headers["Application-Data"] == "silence_stream://200"
    done = await esl.event("CHANNEL_EXECUTE_COMPLETE", call.uuid)
    assert done.headers["Application-Response"] == "FILE PLAYED"
    assert call.plays[0].status == "done" and len(call.plays[0].pcm) == 3200
    await call.hangup()
    await esl.close()


async def test_stream_audio_becomes_a_play_event_and_a_file(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CUSTOM mod_audio_stream::play mod_audio_stream::json")
    call = await peer.place_call(ws.url, destination="7000")
    conn = await ws.accept()
    audio = ramp_pcm(0.1)
    data = {"audioDataType": "raw", "sampleRate": 8000, "audioData": base64.b64encode(audio).decode()}
    message = {"type": "streamAudio", "data": data}
    await conn.ws.send(json.dumps(message))
    play = await esl.event("mod_audio_stream::play", call.uuid)
    path = peer.temp_dir / f"{call.uuid}_0.tmp.r8"
    assert play.body == b'{"audioDataType":"raw","sampleRate":8000,"file":"%s"}' % str(path).encode()
    assert path.read_bytes() == audio
    wav = {
        "type": "streamAudio",
        "data": {"audioDataType": "wav", "audioData": base64.b64encode(b"RIFF").decode()},
    }
    await conn.ws.send(json.dumps(wav))
    play = await esl.event("mod_audio_stream::play", call.uuid)
    assert json.loads(play.body)["file"].endswith(f"{call.uuid}_1.tmp.wav")
    odd = json.dumps(
        {"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": 11025, "audioData": "AA=="}}
    )
    await conn.ws.send(odd)
    assert (await esl.event("mod_audio_stream::json", call.uuid)).body == odd.encode()
    await conn.ws.send("{broken")
    assert (await esl.event("mod_audio_stream::json", call.uuid)).body == b"{broken"
    assert call.events_text_raw[-1] == "{broken" and len(call.events_text) == 3
    await call.hangup()
    assert not path.exists()  # temp files go with the session
    await esl.close()


async def test_playback_runs_in_real_time_and_break_truncates(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain PLAYBACK_START PLAYBACK_STOP")
    call = await peer.place_call(ws.url, destination="7000")
    short, long_ = ramp_pcm(0.5, seed=1), ramp_pcm(2.0, seed=2)
    (tmp_path / "short.r8").write_bytes(short)
    (tmp_path / "long.r8").write_bytes(long_)
    assert await esl.api(f"uuid_broadcast {call.uuid} {tmp_path}/short.r8 aleg") == "+OK Message sent\n"
    start = await esl.event("PLAYBACK_START", call.uuid)
    assert start.headers["Playback-File-Path"] == f"{tmp_path}/short.r8"
    stop = await esl.event("PLAYBACK_STOP", call.uuid)
    assert stop.headers["Playback-Status"] == "done"
    played = call.plays[0]
    assert played.status == "done" and played.pcm == short
    assert played.started_at is not None and played.stopped_at is not None
    assert 0.49 <= played.stopped_at - played.started_at <= 0.56
    await esl.api(f"uuid_broadcast {call.uuid} {tmp_path}/long.r8 aleg")
    await esl.event("PLAYBACK_START", call.uuid)
    await asyncio.sleep(0.3)  # the caller listens to 300 ms of it, then barges in
    assert await esl.api(f"uuid_break {call.uuid} all") == "+OK\n"
    stop = await esl.event("PLAYBACK_STOP", call.uuid)
    assert stop.headers["Playback-Status"] == "break"
    cut = call.plays[1]
    assert cut.status == "break" and long_.startswith(cut.pcm)
    assert 0.29 <= len(cut.pcm) / 16000 <= 0.36
    assert call.heard() == short + cut.pcm
    assert call.breaks and call.breaks[-1] <= (cut.stopped_at or 0)
    await call.hangup()
    await esl.close()


async def test_break_all_flushes_the_queue_and_plain_break_moves_on(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain PLAYBACK_START PLAYBACK_STOP")
    call = await peer.place_call(ws.url, destination="7000")
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.r8").write_bytes(ramp_pcm(2.0))
        await esl.api(f"uuid_broadcast {call.uuid} {tmp_path}/{name}.r8")
    assert (await esl.event("PLAYBACK_START", call.uuid)).headers["Playback-File-Path"].endswith("a.r8")
    await esl.api(f"uuid_break {call.uuid}")  # a stops, b starts
    assert (await esl.event("PLAYBACK_STOP", call.uuid)).headers["Playback-Status"] == "break"
    assert (await esl.event("PLAYBACK_START", call.uuid)).headers["Playback-File-Path"].endswith("b.r8")
    await esl.api(f"uuid_break {call.uuid} all")  # b stops, c never plays
    await esl.event("PLAYBACK_STOP", call.uuid)
    await esl.api("uuid_exists x")
    assert [p.status for p in call.plays] == ["break", "break", "flushed"]
    assert not [e for e in esl.events if e.name == "PLAYBACK_START"]
    await call.hangup()
    await esl.close()


async def test_wav_at_another_rate_is_resampled_and_missing_files_are_not_found(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CHANNEL_EXECUTE_COMPLETE")
    call = await peer.place_call(ws.url, destination="7000")
    write_wav(tmp_path / "x.wav", np.zeros(1600, dtype=np.int16), 16000)  # 100 ms at 16 kHz
    await esl.api(f"uuid_broadcast {call.uuid} playback::{tmp_path}/x.wav")
    done = await esl.event("CHANNEL_EXECUTE_COMPLETE", call.uuid)
    assert done.headers["Application-Response"] == "FILE PLAYED"
    assert len(call.plays[0].pcm) == 800 * 2  # 100 ms at the call's 8 kHz
    await esl.api(f"uuid_broadcast {call.uuid} {tmp_path}/missing.wav")
    missing = await esl.event("CHANNEL_EXECUTE_COMPLETE", call.uuid)
    assert missing.headers["Application-Response"] == "FILE NOT FOUND"
    assert call.plays[1].status == "notfound"
    await call.hangup()
    await esl.close()


async def test_uuid_record_writes_caller_and_robot_audio(
    peer: FreeSwitchPeer, ws: WsRecorder, tmp_path: Path
) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain RECORD_STOP PLAYBACK_STOP")
    call = await peer.place_call(ws.url, destination="7000")
    out = tmp_path / "rec" / "call.wav"
    assert await esl.api(f"uuid_record {call.uuid} start {out}") == "+OK Success\n"
    loud = (np.ones(1600, dtype=np.int16) * 4000).astype("<i2").tobytes()  # 200 ms, constant
    await call.stream_pcm(loud)
    (tmp_path / "robot.r8").write_bytes((np.ones(1600, dtype=np.int16) * -3000).astype("<i2").tobytes())
    await esl.api(f"uuid_broadcast {call.uuid} {tmp_path}/robot.r8")
    await esl.event("PLAYBACK_STOP", call.uuid)
    assert await esl.api(f"uuid_record {call.uuid} stop {out}") == "+OK Success\n"
    stop = await esl.event("RECORD_STOP", call.uuid)
    assert stop.headers["Record-File-Path"] == str(out)
    assert call.recordings == [out]
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 8000 and wav.getnchannels() == 1
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert 0.39 <= len(samples) / 8000 <= 0.6
    assert int((samples == 4000).sum()) >= 1500  # the caller's 200 ms
    assert int((samples == -3000).sum()) >= 1400  # the robot's 200 ms after it
    assert await esl.api(f"uuid_record {call.uuid} stop {out}") == "-ERR Cannot stop record session!\n"
    await call.hangup()
    await esl.close()


async def test_hangup_ends_stream_and_fires_hangup_events(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command(
        "event plain CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CUSTOM mod_audio_stream::disconnect"
    )
    call = await peer.place_call(ws.url, destination="7000")
    conn = await ws.accept()
    await call.hangup("ORIGINATOR_CANCEL")
    assert (await esl.event("CHANNEL_HANGUP", call.uuid)).headers["Hangup-Cause"] == "ORIGINATOR_CANCEL"
    assert (await esl.event("CHANNEL_HANGUP_COMPLETE", call.uuid)).headers["Answer-State"] == "hangup"
    await asyncio.wait_for(conn.closed.wait(), 3)
    assert conn.ws.close_code == 1000
    assert call.ended.is_set() and call.uuid not in peer.calls
    assert not peer.events_named("mod_audio_stream::disconnect", call.uuid)  # the session is gone
    await esl.close()


async def test_server_close_and_connect_failure_events(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CUSTOM mod_audio_stream::disconnect mod_audio_stream::error")
    call = await peer.place_call(ws.url, destination="7000")
    conn = await ws.accept()
    await conn.ws.close(1000, "bye")
    gone = await esl.event("mod_audio_stream::disconnect", call.uuid)
    assert gone.body == b'{"status":"disconnected","message":{"code":1000,"reason":"bye"}}'
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = await peer.place_call(f"ws://127.0.0.1:{port}/c", destination="7001")
    error = await esl.event("mod_audio_stream::error", refused.uuid)
    body = json.loads(error.body)
    assert body["status"] == "error" and body["message"]["code"] == 6
    assert refused.stream is None  # the media bug is closed after a connect error
    await asyncio.gather(call.hangup(), refused.hangup())
    await esl.close()


async def test_stream_api_send_text_pause_stop(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    call = await peer.place_call(None, destination="7000")  # the dialplan starts no stream
    assert await esl.api(f'uuid_audio_stream {call.uuid} start {ws.url}/s mono 8k {{"a": "b c"}}') == (
        "+OK Success\n"
    )
    conn = await ws.accept()
    await conn.wait_frames(2)
    assert conn.texts == ['{"a": "b c"}']
    assert await esl.api(f"uuid_audio_stream {call.uuid} start {ws.url} mono 8k") == "-ERR Operation Failed\n"
    assert await esl.api(f'uuid_audio_stream {call.uuid} send_text {{"x":1}}') == "+OK Success\n"
    assert await esl.api(f"uuid_audio_stream {call.uuid} pause") == "+OK Success\n"
    count = len(conn.frames)
    await call.stream_silence(0.1)
    assert len(conn.frames) <= count + 1  # paused: frames are dropped
    assert await esl.api(f'uuid_audio_stream {call.uuid} stop {{"bye":1}}') == "+OK Success\n"
    await asyncio.wait_for(conn.closed.wait(), 3)
    assert conn.texts == ['{"a": "b c"}', '{"x":1}', '{"bye":1}']
    assert await esl.api(f"uuid_audio_stream {call.uuid} stop") == "-ERR Operation Failed\n"
    assert (await esl.api(f"uuid_audio_stream {call.uuid}")).startswith("-USAGE: <uuid> [start | stop")
    await call.hangup()
    await esl.close()


async def test_abrupt_stream_drop_and_bad_input_knobs(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain CUSTOM mod_audio_stream::disconnect")
    call = await peer.place_call(ws.url, destination="7000")
    conn = await ws.accept()
    await call.send_ws_bytes(b"\x01\x02\x03")
    await call.send_ws_text("garbage")
    await call.close_stream_abruptly()
    await asyncio.wait_for(conn.closed.wait(), 3)
    assert conn.ws.close_code == 1006  # no close frame
    assert b"garbage" in [m if isinstance(m, bytes) else m.encode() for _, m in conn.messages]
    gone = await esl.event("mod_audio_stream::disconnect", call.uuid)
    assert json.loads(gone.body)["message"]["code"] == 1006
    await call.hangup()
    await esl.close()


async def test_dtmf_and_answer_by_api(peer: FreeSwitchPeer, ws: WsRecorder) -> None:
    esl = await RawEsl.open(peer)
    await esl.command("event plain DTMF CHANNEL_ANSWER")
    call = await peer.place_call(ws.url, destination="7000", answer=False)
    assert not call.answered.is_set()
    started = time.monotonic()
    assert await esl.api(f"uuid_answer {call.uuid}") == "+OK\n"
    await esl.event("CHANNEL_ANSWER", call.uuid)
    await ws.accept()
    assert time.monotonic() - started < 2
    await call.send_dtmf("12#")
    digits = [(await esl.event("DTMF", call.uuid)).headers["DTMF-Digit"] for _ in range(3)]
    assert digits == ["1", "2", "#"]
    assert await esl.api(f"uuid_send_dtmf {call.uuid} 9") == "+OK Success\n"
    assert call.dtmf_sent == ["9"]
    assert await esl.api(f"uuid_transfer {call.uuid} 1000 XML default") == "+OK\n"
    assert call.transferred_to == "1000"
    await call.hangup()
    await esl.close()
