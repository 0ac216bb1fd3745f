"""Realtime mode end to end on the in-memory bus: the real gateway session and realtime service, the
provider played by the protocol stand-in (tests/stand_ins/realtime_server.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway.test_call_session import RecordingSink
from tests.stand_ins.otlp_collector import OtlpCollector
from tests.stand_ins.realtime_server import VALID_KEY, RealtimeStandIn
from tests.waiting import wait_for
from voiceplatform import subjects, tracing
from voiceplatform.bus import Envelope
from voiceplatform.bus.memory import MemoryBroker
from voiceplatform.config import load_robot
from voiceplatform.gateway import CallSession
from voiceplatform.logging import mask_secrets
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    ControlHangup,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    Message,
    ProviderUsage,
    StageError,
    TtsAudio,
    TurnMetrics,
    VadSpeechStarted,
)
from vp_realtime.app import RealtimeService
from vp_realtime.settings import RealtimeSettings
from vp_recorder.stored import StoredEvent
from vp_recorder.transcript import build_transcript

RATE = 16000
FRAME = 640
RECORDED_STAGES = {s.split(".", 3)[3] for s in subjects.RECORDED}


def _speech(seconds: float, rate: int = RATE) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * 300 * t) * 4000).astype(np.int16).tobytes()


def _silence(seconds: float, rate: int = RATE) -> bytes:
    return b"\0" * (int(rate * seconds) * 2)


def make_robot(root: Path, server: RealtimeStandIn, key: str = VALID_KEY, greeting: str = "") -> Path:
    folder = root / "robots" / "rt"
    folder.mkdir(parents=True, exist_ok=True)
    path = "/v1/realtime/openai" if server.flavor == "yandex" else "/v1/realtime"
    config = {
        "mode": "realtime",
        "greeting_text": greeting,
        "realtime": {
            "provider": server.flavor,
            "url": f"{server.base_url}{path}",
            "voice": "dasha",
            "silence_duration_ms": 300,
            "max_reconnects": 2,
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "prompt.txt").write_text("Ты вежливый помощник клиники.")
    (folder / ".env").write_text(f"YANDEX_API_KEY={key}\nYANDEX_FOLDER_ID=b1gstandin\nOPENAI_API_KEY={key}\n")
    return folder


class Call:
    def __init__(self, broker: MemoryBroker, folder: Path, variables: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.robot = load_robot(folder)
        self.sink = RecordingSink()
        self.seen: list[Message] = []
        self.recorded: list[StoredEvent] = []  # what the recorder's stream would hold
        self.session = CallSession(
            broker.bus("gateway"),
            self.robot,
            channel="web",
            sample_rate=RATE,
            sink=self.sink,
            variables=variables,
        )

    async def start(self) -> None:
        async def record(env: Envelope) -> None:
            self.seen.append(env.message)
            if env.subject.split(".", 3)[3] in RECORDED_STAGES:
                self.recorded.append(StoredEvent(len(self.recorded) + 1, env.subject, env.message))

        await self.broker.bus("observer").subscribe(subjects.ALL_CALLS, record)
        await self.session.start()

    async def provider_connected(self, realtime: RealtimeService) -> None:
        """Until the realtime session's provider connection is open (frames before it are dropped)."""
        call_id = self.session.call_id
        await wait_for(lambda: (s := realtime.sessions.get(call_id)) is not None and s.connected)

    async def say(self, pcm: bytes) -> None:
        for i in range(0, len(pcm) - FRAME + 1, FRAME):
            await self.session.push_audio(pcm[i : i + FRAME])

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.seen if isinstance(m, kind)]


@pytest.fixture
async def realtime(broker: MemoryBroker, tmp_path: Path) -> AsyncIterator[RealtimeService]:
    service = RealtimeService(RealtimeSettings(robots_dir=tmp_path / "robots", instance_id="rt-1"))
    await service.start(broker.bus("realtime"))
    yield service
    await service.drain(2.0)


async def test_a_realtime_call_greets_answers_and_is_recorded_like_the_pipeline(broker, realtime, tmp_path):
    async with RealtimeStandIn(flavor="yandex", reply_audio_s=0.6, pace=0.2) as server:
        call = Call(broker, make_robot(tmp_path, server, greeting="Здравствуйте! Клиника слушает."))
        await call.start()
        await wait_for(lambda: call.session.owners.get("realtime") == "rt-1")
        # the model speaks the greeting into the gateway's greeting turn
        await wait_for(lambda: server.received("response.create"))
        instructions = server.received("response.create")[0].payload["response"]["instructions"]
        assert "Клиника слушает" in instructions
        await wait_for(lambda: len(call.sink.audio) >= 25, timeout=5)
        greeting_done = next(m for m in call.of(LlmDone) if m.turn_id.endswith("-greeting"))
        assert greeting_done.sentences == 1

        await call.say(_speech(0.8) + _silence(0.6))
        await wait_for(lambda: call.of(TurnMetrics), timeout=8)

    update = server.received("session.update")[0].payload["session"]
    assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert update["audio"]["output"]["voice"] == "dasha"
    assert update["instructions"] == "Ты вежливый помощник клиники."
    assert server.handshakes[0].headers["authorization"] == f"api-key {VALID_KEY}"
    assert "gpt%3A%2F%2Fb1gstandin%2Fspeech-realtime-250923" in server.handshakes[0].path or (
        "gpt://b1gstandin/speech-realtime-250923" in server.handshakes[0].path
    )
    # caller audio reached the provider resampled to 24 kHz (1.4 s said → 1.4 s received)
    assert abs(len(server.audio_received()) / 2 / 24000 - 1.4) < 0.05

    started = call.of(VadSpeechStarted)
    assert len(started) == 1
    turn = started[0].turn_id
    asr = call.of(AsrFinal)
    assert [(a.turn_id, a.text, a.route) for a in asr] == [
        (turn, "Здравствуйте, я хочу записаться к врачу.", False)
    ]
    assert asr[0].provider == "realtime-yandex" and asr[0].audio_ms > 0
    sentences = [m for m in call.of(LlmSentence) if m.turn_id == turn]
    assert [s.text for s in sentences] == ["Здравствуйте!", "Чем могу помочь?", "Я слушаю вас."]
    assert not any(s.synthesize for s in call.of(LlmSentence))
    done = next(m for m in call.of(LlmDone) if m.turn_id == turn)
    assert done.text == "Здравствуйте! Чем могу помочь? Я слушаю вас." and not done.interrupted
    assert done.prompt_tokens > 0 and done.completion_tokens > 0
    audio = [m for m in call.of(TtsAudio) if m.turn_id == turn]
    assert {m.sample_rate for m in audio} == {RATE}
    assert sum(len(m.pcm) for m in audio) == pytest.approx(0.6 * RATE * 2, abs=64)
    metrics = call.of(TurnMetrics)[0]
    assert metrics.turn_id == turn and metrics.user_text.startswith("Здравствуйте, я хочу")
    assert metrics.bot_text == done.text and not metrics.interrupted
    assert metrics.first_played_ts_ms >= metrics.speech_end_ts_ms > 0
    await call.session.end("test")
    await wait_for(lambda: call.of(CallEnded))

    # the recorder makes the same transcript of it as of a pipeline call
    doc = build_transcript(call.recorded)
    assert doc["mode"] == "realtime" and doc["turns"] == 1
    said = [(seg["role"], seg["text"]) for seg in doc["segments"]]
    assert said == [
        ("assistant", "Здравствуйте! Чем могу помочь? Я слушаю вас."),  # the greeting, as the model said it
        ("user", "Здравствуйте, я хочу записаться к врачу."),
        ("assistant", done.text),
    ]
    assert doc["metadata"]["providers"]["asr"] and doc["metadata"]["providers"]["llm"]
    usage = [m for m in call.of(ProviderUsage) if m.turn_id == turn]
    assert [(u.stage, u.provider, u.outcome) for u in usage] == [("realtime", "yandex", "ok")]
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (
        done.prompt_tokens,
        done.completion_tokens,
    )
    assert usage[0].audio_ms >= 1300  # the caller audio streamed up to that reply (1.4 s said)


async def test_barge_in_cancels_and_truncates_to_what_was_heard(broker, realtime, tmp_path):
    async with RealtimeStandIn(flavor="yandex", reply_audio_s=4.0, pace=1.0) as server:
        call = Call(broker, make_robot(tmp_path, server))
        await call.start()
        await wait_for(lambda: call.session.owners.get("realtime") == "rt-1")
        await call.provider_connected(realtime)
        await call.say(_speech(0.6) + _silence(0.5))
        await wait_for(lambda: len(call.sink.audio) >= 40, timeout=6)  # 800 ms of the reply heard
        await call.say(_speech(0.5))  # the caller talks over the robot
        await wait_for(lambda: server.truncations, timeout=5)
        await wait_for(lambda: call.of(TurnMetrics))

    interrupt = call.of(ControlInterrupt)[0]
    truncation = server.truncations[0]
    reply_item = server.sent("response.output_item.added")[0]["item"]["id"]
    assert truncation.item_id == reply_item
    assert truncation.audio_end_ms == interrupt.played_ms
    assert 700 <= interrupt.played_ms <= 2000
    # the reply stopped: the provider's audio was cut long before its 4 s, nothing of it played later
    done = next(m for m in call.of(LlmDone) if m.turn_id == interrupt.turn_id)
    assert done.interrupted
    flush_at = next(i for i, e in enumerate(call.sink.events) if e["type"] == "playback.flush")
    assert flush_at >= 0
    metrics = call.of(TurnMetrics)[0]
    assert metrics.interrupted and metrics.played_text
    await call.session.end("test")


async def test_a_refused_key_ends_the_call_with_the_reason_and_no_secret(broker, realtime, tmp_path):
    async with RealtimeStandIn(flavor="yandex") as server:
        wrong = "rt-wrong-key-123456"
        call = Call(broker, make_robot(tmp_path, server, key=wrong))
        await call.start()
        await wait_for(lambda: call.of(CallEnded), timeout=5)

    error = call.of(StageError)[0]
    assert (error.stage, error.kind, error.retryable) == ("realtime", "status", False)
    assert "401" in error.detail and wrong not in error.detail
    assert wrong not in mask_secrets(error.detail)
    assert call.of(ControlHangup)[0].reason == "realtime_unavailable"
    assert call.of(CallEnded)[0].reason == "hangup:realtime_unavailable"
    assert len(server.handshakes) == 1  # a refused key is not retried


async def test_a_dropped_session_is_reopened_with_the_conversation(broker, realtime, tmp_path):
    async with RealtimeStandIn(flavor="yandex", reply_audio_s=1.0, pace=0.2, close_mid_audio=True) as server:
        call = Call(broker, make_robot(tmp_path, server))
        await call.start()
        await call.provider_connected(realtime)
        await call.say(_speech(0.6) + _silence(0.5))
        await wait_for(lambda: len(server.sessions) == 2, timeout=5)
        await wait_for(lambda: len(server.received("session.update")) == 2)
        await wait_for(lambda: server.sessions[1].received("conversation.item.create"))

    seeded = server.sessions[1].received("conversation.item.create")
    assert seeded[0].payload["item"]["role"] == "user"
    assert seeded[0].payload["item"]["content"][0]["text"] == "Здравствуйте, я хочу записаться к врачу."
    errors = call.of(StageError)
    assert errors and errors[0].stage == "realtime" and errors[0].kind == "connection"
    # the reply cut by the drop was closed, so the gateway and the recorder see its end
    assert any(m.interrupted for m in call.of(LlmDone))
    assert not call.of(CallEnded)
    await call.session.end("test")


async def test_a_realtime_turn_is_traced_under_the_gateway_turn(broker, realtime, tmp_path):
    collector = OtlpCollector().start()
    try:
        assert tracing.configure("realtime", endpoint=collector.endpoint)
        async with RealtimeStandIn(flavor="yandex", reply_audio_s=0.6, pace=0.2) as server:
            call = Call(broker, make_robot(tmp_path, server))
            await call.start()
            await wait_for(lambda: call.session.owners.get("realtime") == "rt-1")
            await call.provider_connected(realtime)
            await call.say(_speech(0.8) + _silence(0.6))
            await wait_for(lambda: call.of(TurnMetrics), timeout=8)
        turn = call.of(VadSpeechStarted)[0].turn_id
        tracing.shutdown()  # flushes
        spans = {s.name: s for s in collector.spans if s.attributes.get("vp.turn_id") == turn}
        trace_id, root_id = tracing.turn_ids(call.session.call_id, turn)
        assert {"realtime.first_audio", "realtime.reply", "turn"} <= set(spans)
        for name in ("realtime.first_audio", "realtime.reply"):
            assert spans[name].trace_id == f"{trace_id:032x}"
            assert spans[name].parent_span_id == f"{root_id:016x}"
            assert spans[name].attributes["vp.provider"] == "realtime-yandex"
        reply = spans["realtime.reply"]
        assert reply.attributes["vp.status"] == "completed" and reply.attributes["vp.audio_ms"] >= 550
    finally:
        tracing.shutdown()
        collector.stop()


async def test_per_call_variables_fill_the_prompt_and_the_greeting(broker, realtime, tmp_path):
    """An outbound call's variables reach the realtime model as they reach a pipeline robot."""
    async with RealtimeStandIn(flavor="yandex", reply_audio_s=0.3, pace=0.2) as server:
        folder = make_robot(tmp_path, server, greeting="Здравствуйте, {name}! Клиника слушает.")
        (folder / "prompt.txt").write_text("Ты помощник клиники. Пациент: {name}, запись на {date}.")
        call = Call(broker, folder, variables={"name": "Анна Петровна", "date": "пятницу"})
        await call.start()
        await wait_for(lambda: server.received("response.create"))

    update = server.received("session.update")[0].payload["session"]
    assert update["instructions"] == "Ты помощник клиники. Пациент: Анна Петровна, запись на пятницу."
    greeting = server.received("response.create")[0].payload["response"]["instructions"]
    assert "Здравствуйте, Анна Петровна! Клиника слушает." in greeting
