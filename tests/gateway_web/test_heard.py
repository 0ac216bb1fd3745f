"""What a browser caller heard of the robot: the page reports what its player played, and a reply
cut by a barge-in is recorded up to there, not up to what the gateway had sent (sink.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import numpy as np
from starlette.websockets import WebSocketState

from tests.gateway_web.scripted_robot import RATE, SECONDS_PER_WORD, Reply, ScriptedRobot
from voiceplatform.bus.nats import NatsBus
from vp_gateway_web.sink import STALE_S, WebSocketSink

SECOND = RATE * 2  # bytes of one second of 16-bit audio at the call's rate


class _Socket:
    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        self.sent.append(data)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_unheard_audio_is_what_was_sent_less_what_the_page_played() -> None:
    clock = _Clock()
    sink = WebSocketSink(_Socket(), RATE, clock)  # type: ignore[arg-type]
    await sink.send_audio(bytes(2 * SECOND))
    assert sink.unheard_bytes() == 0  # no report yet: what was sent counts as heard, as before

    assert sink.playback_report(RATE // 2, False)  # half a second played, then paused
    assert sink.unheard_bytes() == SECOND + SECOND // 2
    clock.now += 0.3
    assert sink.unheard_bytes() == SECOND + SECOND // 2  # not speaking: nothing more was heard

    assert sink.playback_report(RATE, True)  # one second played, and it plays on
    clock.now += 0.25
    assert sink.unheard_bytes() == SECOND - SECOND // 4
    clock.now += 0.9
    assert sink.unheard_bytes() == 0  # it has played everything it was given by now

    assert sink.playback_report(RATE // 4, False)  # less than it said before: it never goes back
    assert sink.unheard_bytes() == SECOND
    assert sink.playback_report(10 * RATE, False)  # more than it was given: all of it, no more
    await sink.send_audio(bytes(SECOND))
    assert sink.unheard_bytes() == SECOND


async def test_a_page_that_stops_reporting_or_a_new_socket_holds_nothing_back() -> None:
    clock = _Clock()
    sink = WebSocketSink(_Socket(), RATE, clock)  # type: ignore[arg-type]
    await sink.send_audio(bytes(SECOND))
    sink.playback_report(0, False)
    assert sink.unheard_bytes() == SECOND
    clock.now += STALE_S + 0.01
    assert sink.unheard_bytes() == 0

    sink.playback_report(0, False)
    sink.attach(_Socket())  # type: ignore[arg-type]  # resumed: the page counts from its new socket
    assert sink.unheard_bytes() == 0
    await sink.send_audio(bytes(SECOND))
    sink.playback_report(RATE // 2, False)
    assert sink.unheard_bytes() == SECOND // 2


async def test_malformed_reports_change_nothing() -> None:
    sink = WebSocketSink(_Socket(), RATE, _Clock())  # type: ignore[arg-type]
    await sink.send_audio(bytes(SECOND))
    bad = [(-1, False), ("10", False), (1.5, False), (True, False), (10, "yes"), (None, None)]
    for done, speaking in bad:
        assert not sink.playback_report(done, speaking)
    assert sink.unheard_bytes() == 0  # still no report taken


async def test_audio_not_delivered_is_not_counted_as_sent() -> None:
    socket = _Socket()
    sink = WebSocketSink(socket, RATE, _Clock())  # type: ignore[arg-type]
    sink.detach(socket)  # type: ignore[arg-type]
    await sink.send_audio(bytes(SECOND))
    sink.attach(socket)  # type: ignore[arg-type]
    sink.playback_report(0, False)
    assert sink.unheard_bytes() == 0


REPLY_WORDS = ["раз", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять", "десять"]
LOUD = (np.sin(np.arange(320) / 3.0) * 5000).astype("<i2").tobytes()
QUIET = bytes(640)


async def _cut_reply(gw: Any, private_nats: str, played_s: float | None) -> dict[str, Any]:
    """A caller asks, the robot answers with 10 words (3.5 s), the caller speaks over it once 3 s
    of it were sent; a page reporting ``played_s`` as played (None: a page that never reports).
    Returns the reply.cut event."""
    robot = ScriptedRobot(
        await NatsBus.connect(private_nats, "scripted-robot"), [Reply("вопрос", [" ".join(REPLY_WORDS)])]
    )
    await robot.start()
    ws, _ = await gw.call()
    received = {"reply": 0}
    events: list[dict[str, Any]] = []
    talk = {"loud": 0}  # frames of loud audio still to send

    async def speak() -> None:
        while True:
            frame = LOUD if talk["loud"] > 0 else QUIET
            talk["loud"] -= 1
            await ws.send(frame)
            await asyncio.sleep(0.02)

    async def listen() -> None:
        async for message in ws:
            if isinstance(message, bytes):
                if any(e["type"] == "bot.sentence" for e in events):
                    received["reply"] += len(message)
                    if played_s is not None:
                        done = min(received["reply"] // 2, int(played_s * RATE))
                        await ws.send(json.dumps({"type": "playback", "done": done, "speaking": False}))
            else:
                events.append(json.loads(message))

    tasks = [asyncio.create_task(speak()), asyncio.create_task(listen())]
    try:
        await asyncio.sleep(0.5)  # the greeting (0.1 s) is over
        talk["loud"] = 20  # 0.4 s of speech, then the silence that ends the turn
        async with asyncio.timeout(20):
            while received["reply"] < 3.0 * SECOND:
                await asyncio.sleep(0.02)
            talk["loud"] = 40  # over the reply: a barge-in
            while not any(e["type"] == "reply.cut" for e in events):
                await asyncio.sleep(0.02)
        return next(e for e in events if e["type"] == "reply.cut")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await ws.close()
        await robot.stop()
        await robot.bus.close()


async def test_a_cut_reply_is_recorded_up_to_what_the_page_played(gateway_factory, private_nats):
    async with gateway_factory() as gw:
        reported = await _cut_reply(gw, private_nats, played_s=1.5)
        unreported = await _cut_reply(gw, private_nats, played_s=None)

    heard = reported["heard_text"].rstrip("…").split()
    sent = unreported["heard_text"].rstrip("…").split()
    words_in_1_5_s = int(1.5 / SECONDS_PER_WORD)  # 4 of the 10 words
    assert abs(len(heard) - words_in_1_5_s) <= 1, reported
    assert heard == REPLY_WORDS[: len(heard)]
    # the page that does not report: heard as far as sent (3 s and more: 8 words at least)
    assert len(sent) >= int(3.0 / SECONDS_PER_WORD), unreported
    assert sent == REPLY_WORDS[: len(sent)]


async def test_a_flush_leaves_nothing_waiting_to_be_heard() -> None:
    socket = _Socket()
    sink = WebSocketSink(socket, RATE, _Clock())  # type: ignore[arg-type]
    await sink.send_audio(bytes(SECOND))
    sink.playback_report(RATE // 4, False)
    assert sink.unheard_bytes() == SECOND - SECOND // 4
    await sink.flush("t1")
    assert json.loads(socket.sent[-1]) == {"type": "playback.flush", "turn_id": "t1"}
    assert sink.unheard_bytes() == 0  # the page dropped the rest
    sink.playback_report(RATE // 4, False)  # a report sent before the flush, arriving after it
    assert sink.unheard_bytes() == 0
