"""Keypad digits, transfer and recording on the phone path: the FreeSWITCH peer, gateway-fs, and the
real prompt-router and llm (the script engine) over NATS; the test plays only VAD/ASR and TTS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway_fs.conftest import RATE, Stack, robot_quiet, tone
from tests.waiting import wait_for
from voiceplatform import subjects
from voiceplatform.audio import write_wav
from voiceplatform.bus import Envelope
from voiceplatform.bus.nats import NatsBus
from voiceplatform.wire import (
    AsrFinal,
    CallDtmf,
    CallEnded,
    CallRecording,
    CallStarted,
    ControlInterrupt,
    ControlRecord,
    ControlTransfer,
    LlmDone,
    LlmRequest,
    LlmSentence,
    TtsAudio,
    TurnMetrics,
)
from voiceplatform_devstack import PeerCall
from vp_llm.app import LlmService
from vp_llm.settings import LlmSettings
from vp_recorder.stored import StoredEvent
from vp_recorder.transcript import build_transcript
from vp_router.app import RouterService
from vp_router.settings import RouterSettings

MENU = {
    "start": "main",
    "transfer_to": "operators",
    "states": {
        "main": {
            "intents": [
                {"id": "balance", "dtmf": "1", "keywords": ["баланс"], "reply": "Ваш баланс сто рублей."},
                {"id": "order", "dtmf": ["2", "22"], "reply": "Назовите номер заказа.", "next": "order"},
            ],
            "fallback": "Нажмите один для баланса или ноль для оператора.",
        },
        "order": {
            "intents": [{"id": "order_number", "dtmf": "123", "reply": "Заказ сто двадцать три в пути."}],
            "fallback": "Такого заказа нет.",
        },
    },
    "builtins": {
        "operator": {"dtmf": "0", "examples": [], "keywords": ["оператор", "соедините"]},
        "repeat": {"enabled": False},
        "goodbye": {"enabled": False},
    },
}


def add_robot(stack: Stack, name: str, **config: object) -> None:
    """A robot with the script engine (keywords and keys only: no encoder to load)."""
    folder = stack.recordings.parent / "robots" / name
    folder.mkdir(parents=True)
    base = {"llm": {"provider": "script"}, "barge_in": {"min_speech_ms": 0}, "turns": {"no_input_s": 0}}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    (folder / "dialog.json").write_text(json.dumps(MENU, ensure_ascii=False))
    write_wav(folder / "greeting.wav", tone(500.0, 0.3), 16000)


@dataclass
class Brain:
    stack: Stack
    spoken: list[LlmSentence]

    async def call(self, robot: str) -> tuple[PeerCall, str]:
        metadata = json.dumps({"robot": robot, "dnis": "7100", "caller": "79990001122"})
        call = await self.stack.call("7100", metadata=metadata)
        call_id = f"phone-{call.uuid}"
        await wait_for(lambda: self.stack.of(CallStarted, call_id))
        await robot_quiet(self.stack, call)
        return call, call_id


@pytest.fixture
async def brain(stack: Stack, private_nats: str) -> AsyncIterator[Brain]:
    add_robot(stack, "menu")
    add_robot(stack, "taped", recording={"enabled": True})
    robots = stack.recordings.parent / "robots"
    router_bus = await NatsBus.connect(private_nats, "prompt-router")
    llm_bus = await NatsBus.connect(private_nats, "llm")
    router = RouterService(RouterSettings(robots_dir=robots))
    llm = LlmService(LlmSettings(robots_dir=robots))
    spoken: list[LlmSentence] = []

    async def tts(env: Envelope) -> None:  # every reply sentence becomes 0.4 s of tone
        msg = env.message
        if isinstance(msg, LlmSentence) and not msg.turn_id.endswith("-greeting"):
            spoken.append(msg)
            pcm = tone(700.0, 0.4, msg.sample_rate).astype("<i2").tobytes()
            audio = TtsAudio(
                call_id=msg.call_id,
                turn_id=msg.turn_id,
                index=msg.index,
                seq=0,
                sample_rate=msg.sample_rate,
                pcm=pcm,
                last=True,
                text=msg.text,
            )
            await stack.workers.publish(subjects.tts_audio(msg.call_id), audio)

    sub = await stack.workers.subscribe(subjects.ANY_LLM_SENTENCE, tts, queue="tts-replies")
    await router.start(router_bus)
    await llm.start(llm_bus)
    await asyncio.sleep(0.2)  # every subscription registered
    try:
        yield Brain(stack, spoken)
    finally:
        await sub.unsubscribe()
        await llm.drain(1.0)
        await router.drain(1.0)
        await llm_bus.close()
        await router_bus.close()


def transcript(stack: Stack, call_id: str) -> dict[str, object]:
    stored = [StoredEvent(i, "", m) for i, m in enumerate(stack.seen) if m.call_id == call_id]
    return build_transcript(stored)


def api_lines(stack: Stack, uuid: str, command: str) -> list[str]:
    return [c.line for c in stack.peer.commands if c.line.startswith(f"api {command} {uuid}")]


async def test_keys_choose_the_scripts_branch_and_are_the_callers_words(brain: Brain) -> None:
    stack = brain.stack
    call, call_id = await brain.call("menu")
    heard = len(call.heard())
    await call.send_dtmf("1#")  # the end key closes the sequence at once
    (done,) = await wait_done(stack, call_id, 1)
    assert done.text == "Ваш баланс сто рублей." and done.intent == "balance"
    (final,) = [m for m in stack.of(AsrFinal, call_id) if m.dtmf]
    assert final.text == "1" and final.turn_id == done.turn_id
    (req,) = [m for m in stack.of(LlmRequest, call_id) if m.turn_id == done.turn_id]
    assert req.event == "dtmf" and req.user_text == "1"
    await wait_for(lambda: len(call.heard()) >= heard + int(0.4 * RATE) * 2)  # the reply was played

    # a sequence without the end key ends after the inter-digit pause; state "order" then knows "123"
    await call.send_dtmf("2")
    await wait_done(stack, call_id, 2)
    await robot_quiet(stack, call)
    await call.send_dtmf("123")
    (*_, third) = await wait_done(stack, call_id, 3)
    assert third.text == "Заказ сто двадцать три в пути."
    await wait_for(lambda: stack.of(TurnMetrics, call_id) and len(turn_texts(stack, call_id)) == 3)
    assert turn_texts(stack, call_id) == ["1", "2", "123"]
    assert [m.digits for m in stack.of(CallDtmf, call_id)] == ["1", "#", "2", "1", "2", "3"]

    await call.hangup()
    await wait_for(lambda: stack.of(CallEnded, call_id))
    doc = transcript(stack, call_id)
    users = [s for s in doc["segments"] if s["role"] == "user"]  # type: ignore[index, union-attr]
    assert [(s["text"], s.get("dtmf")) for s in users] == [("1", True), ("2", True), ("123", True)]
    robot = [s["text"] for s in doc["segments"] if s["role"] == "assistant"]  # type: ignore[index, union-attr]
    assert "Ваш баланс сто рублей." in robot and "Заказ сто двадцать три в пути." in robot


def turn_texts(stack: Stack, call_id: str) -> list[str]:
    return [m.user_text for m in stack.of(TurnMetrics, call_id) if m.user_text]


async def wait_done(stack: Stack, call_id: str, count: int) -> list[LlmDone]:
    await wait_for(lambda: len([m for m in stack.of(LlmDone, call_id) if not m.interrupted]) >= count, 15)
    return [m for m in stack.of(LlmDone, call_id) if not m.interrupted]


async def test_a_key_during_robot_speech_barges_in(stack: Stack) -> None:
    call = await stack.call("7002")  # robot "long": a 3 s greeting
    call_id = f"phone-{call.uuid}"
    await wait_for(lambda: stack.peer.events_named("PLAYBACK_START", call.uuid))
    await asyncio.sleep(0.3)  # the robot is talking
    await call.send_dtmf("5#")
    await wait_for(lambda: stack.of(ControlInterrupt, call_id))
    (cut,) = stack.of(ControlInterrupt, call_id)
    assert cut.turn_id == f"{call_id}-greeting" and cut.reason == "barge_in"
    await wait_for(lambda: call.breaks)  # uuid_break: the caller no longer hears the greeting
    await wait_for(lambda: [m for m in stack.of(AsrFinal, call_id) if m.dtmf])
    (final,) = stack.of(AsrFinal, call_id)
    assert final.text == "5" and final.turn_id == cut.by_turn_id and final.provider == "dtmf"
    await call.hangup()


async def test_an_operator_intent_transfers_with_the_summary_as_channel_variables(brain: Brain) -> None:
    stack = brain.stack
    call, call_id = await brain.call("menu")
    await call.send_dtmf("1#")
    await wait_done(stack, call_id, 1)
    await robot_quiet(stack, call)
    # the caller asks for a person in words (the test is the ASR)
    await stack.workers.publish(
        subjects.asr(call_id),
        AsrFinal(call_id=call_id, turn_id=f"{call_id}-u9", text="соедините с оператором"),
    )
    await wait_for(lambda: stack.of(CallEnded, call_id), 15)
    (ended,) = stack.of(CallEnded, call_id)
    assert ended.reason == "transferred" and ended.transfer_to == "operators"
    assert call.transferred_to == "operators" and not call.ended.is_set()
    (transfer,) = stack.of(ControlTransfer, call_id)
    assert transfer.summary["intent"] == "builtin.operator"
    variables = call.variables
    assert variables["vp_call_id"] == call_id and variables["vp_caller"] == "79990001122"
    assert variables["vp_intent"] == "builtin.operator" and variables["vp_robot"] == "menu"
    assert variables["vp_last_user"] == "соедините с оператором"
    assert "Клиент: 1 / Робот: Ваш баланс сто рублей." in variables["vp_dialogue"]
    # every variable is set before the transfer
    lines = [c.line for c in stack.peer.commands if call.uuid in c.line and c.line.startswith("api uuid_")]
    first_transfer = next(i for i, line in enumerate(lines) if line.startswith("api uuid_transfer"))
    assert all(i < first_transfer for i, line in enumerate(lines) if line.startswith("api uuid_setvar"))
    assert transcript(stack, call_id)["transferred_to"] == "operators"
    await call.hangup()


def freeswitch_recordings(stack: Stack, call_id: str) -> list[CallRecording]:
    """FreeSWITCH's uuid_record files (the gateway announces its own stereo WAV of every call too)."""
    return [m for m in stack.of(CallRecording, call_id) if not m.format]


async def test_recording_on_request_and_by_robot_config_keeps_the_path(brain: Brain) -> None:
    stack = brain.stack
    call, call_id = await brain.call("taped")  # recording.enabled: recorded from the start
    await wait_for(lambda: freeswitch_recordings(stack, call_id))
    (started,) = freeswitch_recordings(stack, call_id)
    assert started.action == "start" and Path(started.path) == (stack.recordings / f"{call_id}.wav").resolve()
    assert api_lines(stack, call.uuid, "uuid_record") == [f"api uuid_record {call.uuid} start {started.path}"]
    await call.hangup()

    other, other_id = await brain.call("menu")
    assert not freeswitch_recordings(stack, other_id)
    await stack.workers.publish(
        subjects.control(other_id), ControlRecord(call_id=other_id, action="start", path="asked/x.wav")
    )
    await wait_for(lambda: freeswitch_recordings(stack, other_id))
    await stack.workers.publish(subjects.control(other_id), ControlRecord(call_id=other_id, action="stop"))
    await wait_for(lambda: len(freeswitch_recordings(stack, other_id)) == 2)
    path = str((stack.recordings / "asked" / "x.wav").resolve())
    assert [(m.action, m.path) for m in freeswitch_recordings(stack, other_id)] == [
        ("start", path),
        ("stop", path),
    ]
    await other.hangup()
    await wait_for(lambda: stack.of(CallEnded, other_id))
    recordings: list[dict[str, object]] = transcript(stack, other_id)["recordings"]  # type: ignore[assignment]
    (kept,) = [r for r in recordings if r["path"] == path]
    assert kept["stopped_offset_ms"] is not None
