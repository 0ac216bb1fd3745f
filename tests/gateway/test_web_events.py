"""What a call's client is told beyond the audio (docs/protocols/web-client.md): the greeting's words,
what was heard of a cut reply, a stage error's cause, a topic switch; and a graceful hangup does not
wait for a reply nobody will ever hear."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.gateway.test_call_session import RATE, RecordingSink, reply, start_call
from tests.gateway.test_call_session import robot as robot  # the fixture
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.config import load_robot
from voiceplatform.gateway import CallSession
from voiceplatform.runtime.stage_errors import publish_stage_error
from voiceplatform.wire import ControlHangup, ControlInterrupt, PromptSwitched, VadSpeechStarted


def events(sink: RecordingSink, kind: str) -> list[dict]:
    return [e for e in sink.events if e["type"] == kind]


async def test_the_client_gets_the_recorded_greetings_words_and_the_starting_prompt(broker, robot):
    session, sink, _workers, _seen = await start_call(broker, robot)
    greeting = events(sink, "bot.sentence")[0]
    assert greeting == {
        "type": "bot.sentence",
        "turn_id": session.greeting_turn,
        "index": 0,
        "text": "Здравствуйте!",
    }
    assert events(sink, "call.started")[0]["prompt"] == "default"
    await session.end("test")


async def test_a_cut_reply_tells_the_client_what_was_heard(broker, robot):
    session, sink, workers, seen = await start_call(broker, robot)
    call = session.call_id
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u1", audio_offset_ms=0))
    await reply(workers, call, "u1", ["Первое предложение ответа.", "Второе предложение ответа."], 50)
    await wait_for(lambda: session.turns.get("u1") is not None and session.turns.get("u1").first_played_ts_ms)
    await workers.publish(
        subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u2", audio_offset_ms=5000)
    )
    cuts = lambda: [e for e in events(sink, "reply.cut") if e["turn_id"] == "u1"]  # noqa: E731
    await wait_for(cuts, timeout=10)
    cut = cuts()[0]
    ours = lambda: [m for m in seen if isinstance(m, ControlInterrupt) and m.turn_id == "u1"]  # noqa: E731
    await wait_for(ours)
    interrupt = ours()[0]
    assert cut == {
        "type": "reply.cut",
        "turn_id": "u1",
        "heard_text": interrupt.played_text,
        "reason": interrupt.reason,
    }
    assert "Второе" not in cut["heard_text"]
    await session.end("test")


async def test_a_stage_error_carries_its_cause_and_a_topic_switch_is_shown(broker, robot):
    session, sink, workers, _seen = await start_call(broker, robot)
    call = session.call_id
    await publish_stage_error(workers, call_id=call, stage="tts", kind="status", detail="HTTP 401 bad key")
    switched = PromptSwitched(
        call_id=call, turn_id="u1", from_prompt="default", to_prompt="pets", matched="собака"
    )
    await workers.publish(subjects.lifecycle(call), switched)
    await wait_for(lambda: events(sink, "error") and events(sink, "prompt.switched"))
    error = events(sink, "error")[0]
    assert (error["stage"], error["kind"], error["detail"]) == ("tts", "status", "HTTP 401 bad key")
    topic = events(sink, "prompt.switched")[0]
    assert (topic["prompt"], topic["from_prompt"], topic["matched"]) == ("pets", "default", "собака")
    await session.end("test")


@pytest.fixture
def silent_robot(tmp_path):
    """A robot whose greeting is said by a model (no greeting.wav, realtime mode): not heard yet."""
    folder = tmp_path / "robots" / "rt"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"mode": "realtime", "greeting_text": "Здравствуйте!"}))
    return load_robot(folder)


async def test_a_graceful_hangup_does_not_wait_for_a_greeting_nobody_will_say(broker, silent_robot):
    sink = RecordingSink()
    session = CallSession(broker.bus("gateway"), silent_robot, channel="web", sample_rate=RATE, sink=sink)
    await session.start()
    assert session.playout.current is not None  # the greeting turn waits for the model's audio
    hangup = ControlHangup(call_id=session.call_id, reason="realtime_unavailable", graceful=True)
    await broker.bus("realtime").publish(subjects.control(session.call_id), hangup)
    await asyncio.wait_for(session.closed.wait(), 10)
    assert session.end_reason == "hangup:realtime_unavailable"
    assert events(sink, "call.ended") == [{"type": "call.ended", "reason": "hangup:realtime_unavailable"}]


async def test_a_graceful_hangup_lets_the_reply_being_heard_finish(broker, robot):
    session, _sink, workers, _seen = await start_call(broker, robot)
    call = session.call_id
    await workers.publish(subjects.vad(call), VadSpeechStarted(call_id=call, turn_id="u1", audio_offset_ms=0))
    await reply(workers, call, "u1", ["До свидания, хорошего дня!"], 25)
    await wait_for(lambda: session.turns.get("u1") is not None and session.turns.get("u1").first_played_ts_ms)
    await workers.publish(
        subjects.control(call), ControlHangup(call_id=call, reason="operator", graceful=True)
    )
    await asyncio.wait_for(session.closed.wait(), 10)
    assert session.end_reason == "robot_hangup"  # after the reply was played out
    assert session.turns_completed == 1
