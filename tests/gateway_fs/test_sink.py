"""FsSink alone: segmenting, play events → queued playback, barge-in, goodbye then hangup, and
what the caller heard (the session's clock) from PLAYBACK_START/STOP."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from prometheus_client import REGISTRY

from tests.waiting import wait_for
from vp_gateway_fs.esl import EslEvent, EslReply, EslUnavailable
from vp_gateway_fs.sink import FsSink

RATE = 8000
FRAME = 320


class FakeWs:
    connected = True

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed: int | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code
        self.connected = False

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

    def submit_sendmsg(self, uuid: str, headers: list[tuple[str, str]]) -> asyncio.Future[EslReply]:
        return self.submit(f"sendmsg {uuid} " + " ".join(f"{k}={v}" for k, v in headers))

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


def make_sink(**kw: Any) -> tuple[FsSink, FakeWs, FakeEsl]:
    ws, esl = FakeWs(), FakeEsl()
    return FsSink(ws, esl, "u1", RATE, idle_flush_s=0.05, **kw), ws, esl  # type: ignore[arg-type]


def execute(path: str) -> str:
    return f"sendmsg u1 call-command=execute execute-app-name=playback execute-app-arg={path}"


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


async def test_play_events_are_queued_in_order_and_stale_ones_dropped_after_a_flush() -> None:
    sink, _ws, esl = make_sink()
    for _ in range(28):
        await sink.send_audio(frame(1))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    await sink.flush("turn-1")  # barge-in while segment 1 is still being written by FreeSWITCH
    sink.on_play(play_event("/tmp/u1_1.tmp.r8"))  # its play event arrives after the flush
    assert esl.commands == [execute("/tmp/u1_0.tmp.r8"), "api uuid_break u1 all"]
    for _ in range(8):
        await sink.send_audio(frame(2))  # the next turn plays normally
    sink.on_play(play_event("/tmp/u1_2.tmp.r8"))
    assert esl.commands[-1] == execute("/tmp/u1_2.tmp.r8")


async def test_the_broadcast_path_is_still_there_to_measure_against() -> None:
    sink, _ws, esl = make_sink(playback="broadcast")
    for _ in range(8):
        await sink.send_audio(frame(1))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    assert esl.commands == ["api uuid_broadcast u1 /tmp/u1_0.tmp.r8 aleg"]


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


def lost(reason: str) -> float:
    return REGISTRY.get_sample_value("vp_gateway_fs_playback_lost_total", {"reason": reason}) or 0.0


def execute_complete(path: str, response: str) -> EslEvent:
    headers = {"Event-Name": "CHANNEL_EXECUTE_COMPLETE", "Unique-ID": "u1", "Application": "playback"}
    return EslEvent({**headers, "Application-Data": path, "Application-Response": response})


async def test_unheard_audio_follows_playback_start_and_stop() -> None:
    sink, _ws, _esl = make_sink()
    for _ in range(8):
        await sink.send_audio(frame(1))
    assert sink.unheard_bytes() == 8 * FRAME  # sent as a file, not played yet
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    assert sink.unheard_bytes() == 8 * FRAME  # queued on the channel
    start = playback("PLAYBACK_START", "/tmp/u1_0.tmp.r8")
    start.received -= 0.1  # FreeSWITCH started it 100 ms ago: 5 of 8 frames are still to come
    sink.on_playback(start)
    assert 0 < sink.unheard_bytes() <= 3 * FRAME + 2
    sink.on_playback(playback("PLAYBACK_STOP", "/tmp/u1_0.tmp.r8"))
    assert sink.unheard_bytes() == 0


async def test_a_file_freeswitch_cannot_open_ends_at_its_execute_complete_and_close_does_not_wait() -> None:
    sink, _ws, esl = make_sink()
    before = lost("not_played")
    for _ in range(8):
        await sink.send_audio(frame(3))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    closing = asyncio.create_task(sink.close("robot_hangup"))
    await asyncio.sleep(0.05)
    assert not closing.done()  # the goodbye is queued: close waits for it
    sink.on_execute_complete(execute_complete("/tmp/u1_0.tmp.r8", "FILE NOT FOUND"))  # no START, no STOP
    await asyncio.wait_for(closing, 5)
    assert esl.commands[-1] == "api uuid_kill u1 NORMAL_CLEARING"
    assert lost("not_played") == before + 1 and sink.unheard_bytes() == 0


async def test_missing_playback_stop_ends_after_the_grace_not_never() -> None:
    sink, _ws, _esl = make_sink(stop_grace_s=0.05)
    before = lost("no_stop")
    for _ in range(8):
        await sink.send_audio(frame(3))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    sink.on_playback(playback("PLAYBACK_START", "/tmp/u1_0.tmp.r8"))
    assert not await sink.wait_drained(0.01)
    assert await sink.wait_drained(5)  # 160 ms of audio + 50 ms grace, then it counts as over
    assert lost("no_stop") == before + 1 and sink.unheard_bytes() == 0
    for _ in range(8):  # a file that never starts and never completes: over once nothing plays
        await sink.send_audio(frame(4))
    sink.on_play(play_event("/tmp/u1_1.tmp.r8"))
    assert await sink.wait_drained(5)
    assert lost("no_stop") == before + 2


async def test_a_listener_hears_each_file_when_it_starts_and_nothing_after_the_hangup() -> None:
    sink, _ws, _esl = make_sink()
    heard: list[tuple[bytes, float]] = []
    hung: list[float] = []
    sink.report_heard(lambda pcm, at: heard.append((pcm, at)), hung.append)
    for i in range(8):
        await sink.send_audio(frame(i))
    for i in range(8):
        await sink.send_audio(frame(100 + i))
    await wait_for(lambda: len(_ws.segments()) == 2)
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    sink.on_play(play_event("/tmp/u1_1.tmp.r8"))
    assert heard == []  # queued, not heard yet
    start = playback("PLAYBACK_START", "/tmp/u1_0.tmp.r8")
    sink.on_playback(start)
    assert heard == [(b"".join(frame(i) for i in range(8)), start.received)]
    sink.on_playback(playback("PLAYBACK_STOP", "/tmp/u1_0.tmp.r8"))
    sink.on_playback(second := playback("PLAYBACK_START", "/tmp/u1_1.tmp.r8"))
    assert heard[1] == (b"".join(frame(100 + i) for i in range(8)), second.received)
    sink.hung_up(second.received + 0.05)
    sink.channel_gone()  # reported again: told once
    assert hung == [second.received + 0.05]


async def test_files_cut_by_a_barge_in_are_never_heard() -> None:
    sink, _ws, _esl = make_sink()
    heard: list[bytes] = []
    sink.report_heard(lambda pcm, at: heard.append(pcm), lambda at: None)
    for _ in range(8):
        await sink.send_audio(frame(1))
    sink.on_play(play_event("/tmp/u1_0.tmp.r8"))
    await sink.flush("turn-1")
    sink.on_playback(playback("PLAYBACK_START", "/tmp/u1_0.tmp.r8"))  # a late event of the cut file
    assert heard == []
