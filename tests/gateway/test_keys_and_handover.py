"""Keypad turns and the transfer/record refusals of a browser call (the shared call session)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.gateway.test_call_session import RATE, start_call
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.config import load_robot
from voiceplatform.gateway.handover import call_summary, clean_value
from voiceplatform.gateway.turns import Turn, TurnState
from voiceplatform.wire import AsrFinal, ControlRecord, ControlTransfer, StageError


@pytest.fixture
def robot(tmp_path):
    folder = tmp_path / "robots" / "bot"
    folder.mkdir(parents=True)
    config = {"llm": {"provider": "openai"}, "dtmf": {"max_digits": 1}, "turns": {"no_input_s": 0}}
    (folder / "config.json").write_text(json.dumps(config))
    write_wav(folder / "greeting.wav", (np.ones(RATE // 5) * 1000).astype(np.int16), RATE)
    return load_robot(folder)


async def test_a_browser_call_cannot_be_transferred_or_recorded_and_goes_on(broker, robot) -> None:
    session, sink, workers, seen = await start_call(broker, robot)
    call_id = session.call_id
    await workers.publish(subjects.control(call_id), ControlTransfer(call_id=call_id, destination="100"))
    await workers.publish(subjects.control(call_id), ControlRecord(call_id=call_id, action="start"))
    await wait_for(lambda: len([m for m in seen if isinstance(m, StageError)]) == 2)
    errors = [m for m in seen if isinstance(m, StageError)]
    assert [(e.stage, e.kind) for e in errors] == [
        ("gateway-web", "transfer_unsupported"),
        ("gateway-web", "record_unsupported"),
    ]
    await wait_for(lambda: [e for e in sink.events if e.get("kind") == "transfer_unsupported"])
    assert not session.ended
    await session.end("test")


async def test_one_key_is_a_whole_turn_when_max_digits_is_one(broker, robot) -> None:
    session, _sink, _workers, seen = await start_call(broker, robot)
    await session.press_key("7")
    await session.press_key("x")  # not a key: dropped
    await session.press_key("#")  # the end key alone: nothing to end
    await session.press_key("9")
    await wait_for(lambda: len([m for m in seen if isinstance(m, AsrFinal)]) == 2)
    finals = [m for m in seen if isinstance(m, AsrFinal)]
    assert [(m.text, m.dtmf) for m in finals] == [("7", True), ("9", True)]
    assert finals[0].turn_id != finals[1].turn_id
    await session.end("test")


def test_the_summary_is_flat_safe_text() -> None:
    assert clean_value("раз\nдва 'три' \"4\" \\5 ${x}") == "раз два три 4 5 x"
    assert len(clean_value("я" * 1000)) == 400
    said = Turn("t1", state=TurnState.DONE, user_text="хочу\nоператора")
    said.sentences = {0: "Соединяю."}
    summary = call_summary([said], call_id="c", robot="r", caller="+7", intent="op", reason="robot")
    assert summary["dialogue"] == "Клиент: хочу оператора / Робот: Соединяю."
    assert summary["last_user"] == "хочу оператора" and summary["turns"] == "1"
