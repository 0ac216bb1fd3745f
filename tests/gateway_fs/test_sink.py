"""FsSink alone: segmenting, play events → uuid_broadcast, barge-in, goodbye then hangup."""

from __future__ import annotations

import asyncio
import base64
import json

from starlette.websockets import WebSocketState

from tests.waiting import wait_for
from vp_gateway_fs.esl import EslEvent, EslReply, EslUnavailable
from vp_gateway_fs.sink import FsSink

RATE = 8000
FRAME = 320


class FakeWs:
    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed: int | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code
        self.application_state = WebSocketState.DISCONNECTED

    def segments(self) -> list[bytes]:
        return [base64.b64decode(m["data"]["audioData"]) for m in self.sent if m.get("type") == "streamAudio"]


class FakeEsl:
    def __init__(self) -> None:
        self.commands: list[str] = []
        self.reply = "+OK"
        self.up = True

    def submit(self, command: str) -> asyncio.Future[EslReply]:
        if not self.up:
            raise EslUnavailable("down")
        self.commands.append(command)
        future: asyncio.Future[EslReply] = asyncio.get_running_loop().create_future()
        future.set_result(EslReply(self.reply))
        return future

    async def wait(self, future: asyncio.Future[EslReply], timeout: float | None = None) -> EslReply:
        return await future

    async def command(self, command: str, timeout: float | None = None) -> EslReply:
        return await self.wait(self.submit(command))


def play_event(path: str) -> EslEvent:
    body = json.dumps({"audioDataType": "raw", "sampleRate": RATE, "file": path})
    return EslEvent(
        {"Event-Name": "CUSTOM", "Event-Subclass": "mod_audio_stream::play", "Unique-ID": "u1"}, body
    )


def playback(name: str, path: str) -> EslEvent:
    return EslEvent({"Event-Name": name, "Unique-ID": "u1", "Playback-File-Path": path})


def make_sink() -> tuple[FsSink, FakeWs, FakeEsl]:
    ws, esl = FakeWs(), FakeEsl()
    return FsSink(ws, esl, "u1", RATE, idle_flush_s=0.05), ws, esl  # type: ignore[arg-type]


def frame(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True) * (FRAME // 2)


async def test_small_first_segment_then_large_ones_then_the_rest_when_frames_stop() -> None:
    sink, ws, _ = make_sink()
    for i in range(8 + 20 + 3):
        await sink.send_audio(frame(i))
    assert [len(s) for s in ws.segments()] == [8 * FRAME, 20 * FRAME]  # 160 ms, then 400 ms
    assert ws.sent[0]["data"]["sampleRate"] == RATE and ws.sent[0]["data"]["audioDataType"] == "raw"
    await wait_for(lambda: len(ws.segments()) == 3)  # idle: the 60 ms tail goes out on its own
    assert len(ws.segments()[2]) == 3 * FRAME
    assert b"".join(ws.segments()) == b"".join(frame(i) for i in range(31))  # nothing lost or reordered
    await sink.send_audio(frame(99))  # after an idle gap a new burst starts small again
    for _ in range(7):
        await sink.send_audio(frame(99))
    assert len(ws.segments()[3]) == 8 * FRAME


async def test_play_events_are_broadcast_in_order_and_stale_ones_dropped_after_a_flush() -> None:
    sink, _ws, esl = make_sink()
    for _ in range(28):
        await sink.send_audio(frame(1))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    await sink.flush("turn-1")  # barge-in while segment 1 is still being written by FreeSWITCH
    sink.on_play(play_event("/tmp/u1_1.tmp.r8"))  # its play event arrives after the flush
    assert esl.commands == ["api uuid_broadcast u1 /tmp/u1_0.tmp.r8 aleg", "api uuid_break u1 all"]
    for _ in range(8):
        await sink.send_audio(frame(2))  # the next turn plays normally
    sink.on_play(play_event("/tmp/u1_2.tmp.r8"))
    assert esl.commands[-1] == "api uuid_broadcast u1 /tmp/u1_2.tmp.r8 aleg"


async def test_unsafe_paths_and_esl_outages_lose_the_segment_not_the_call() -> None:
    sink, _ws, esl = make_sink()
    for _ in range(28):
        await sink.send_audio(frame(1))
    sink.on_play(play_event("/tmp/x y.r8\napi status"))
    esl.up = False
    sink.on_play(play_event("/tmp/u1_1.tmp.r8"))
    assert esl.commands == []
    esl.up = True
    await sink.send_audio(frame(1))
    assert sink.open


async def test_close_lets_the_goodbye_finish_then_hangs_up() -> None:
    sink, ws, esl = make_sink()
    for _ in range(8):
        await sink.send_audio(frame(3))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    closing = asyncio.create_task(sink.close("robot_hangup"))
    await asyncio.sleep(0.05)
    assert not closing.done() and not any("uuid_kill" in c for c in esl.commands)
    sink.on_playback(playback("PLAYBACK_START", "/tmp/u1_0.tmp.r8"))
    sink.on_playback(playback("PLAYBACK_STOP", "/tmp/u1_0.tmp.r8"))
    await asyncio.wait_for(closing, 2)
    assert esl.commands[-1] == "api uuid_kill u1 NORMAL_CLEARING"
    assert ws.closed == 1000 and sink.first_playback_at is not None


async def test_close_after_the_caller_hung_up_sends_no_kill() -> None:
    sink, ws, esl = make_sink()
    sink.channel_alive = False
    await sink.close("caller_hangup")
    assert esl.commands == [] and ws.closed == 1000


async def test_gone_channel_is_reported() -> None:
    gone: list[bool] = []
    ws, esl = FakeWs(), FakeEsl()
    sink = FsSink(ws, esl, "u1", RATE, on_channel_gone=lambda: gone.append(True))  # type: ignore[arg-type]
    esl.reply = "-ERR invalid uuid"
    for _ in range(8):
        await sink.send_audio(frame(1))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    await wait_for(lambda: gone)
    assert not sink.channel_alive
