"""The call transcript document, built purely from stored events."""

from __future__ import annotations

import json
import random
from typing import Any

from voiceplatform.turn_figures import turn_figures
from voiceplatform.wire import (
    AsrFinal,
    CallEnded,
    CallStarted,
    ControlInterrupt,
    LlmDone,
    LlmSentence,
    Message,
    PlaybackStarted,
    PromptSwitched,
    StageError,
    TtsAudio,
    TurnMetrics,
    VadSpeechEnded,
    VadSpeechStarted,
)
from vp_recorder.stored import StoredEvent
from vp_recorder.transcript import build_transcript, iso_utc

CALL = "tr-call-1"
GREETING = f"{CALL}-greeting"
T0 = 1_763_700_000_000  # call start, Unix ms


class Script:
    """Builds a call's stored events with stream sequences in publication order."""

    def __init__(self, call_id: str = CALL, first_seq: int = 100) -> None:
        self.call_id = call_id
        self.seq = first_seq
        self.events: list[StoredEvent] = []

    def add(self, msg: Message) -> StoredEvent:
        event = StoredEvent(seq=self.seq, subject=f"vp.call.{msg.call_id}.x", message=msg)
        self.seq += 1
        self.events.append(event)
        return event

    def started(self, at: int = 0) -> None:
        self.add(
            CallStarted(
                call_id=self.call_id,
                robot="pipeline_russian",
                channel="phone",
                sample_rate=8000,
                caller="+79990001122",
                ts_ms=T0 + at,
            )
        )

    def greeting(self, text: str = "Здравствуйте!", played_at: int = 300) -> None:
        self.sentence(GREETING, 0, text, at=20, last=True)
        self.add(PlaybackStarted(call_id=self.call_id, turn_id=GREETING, ts_ms=T0 + played_at))

    def sentence(self, turn_id: str, index: int, text: str, at: int, last: bool = False) -> None:
        self.add(
            LlmSentence(
                call_id=self.call_id,
                turn_id=turn_id,
                index=index,
                text=text,
                robot="pipeline_russian",
                sample_rate=8000,
                last=last,
                ts_ms=T0 + at,
            )
        )

    def user(
        self, turn_id: str, text: str, speech_from: int, speech_to: int, asr_at: int, **asr: Any
    ) -> None:
        c = self.call_id
        self.add(
            VadSpeechStarted(call_id=c, turn_id=turn_id, audio_offset_ms=speech_from, ts_ms=T0 + speech_from)
        )
        self.add(
            VadSpeechEnded(
                call_id=c,
                turn_id=turn_id,
                audio_offset_ms=speech_to,
                speech_ms=speech_to - speech_from,
                ts_ms=T0 + speech_to,
            )
        )
        self.add(
            AsrFinal(
                call_id=c,
                turn_id=turn_id,
                text=text,
                speech_end_ts_ms=T0 + speech_to,
                ts_ms=T0 + asr_at,
                **{"audio_ms": speech_to - speech_from, "provider": "whisper", **asr},
            )
        )

    def done(self, turn_id: str, text: str, sentences: int, at: int, **kw: Any) -> None:
        fields: dict[str, Any] = {"provider": "openai", "prompt_tokens": 100, "completion_tokens": 20, **kw}
        self.add(
            LlmDone(
                call_id=self.call_id, turn_id=turn_id, text=text, sentences=sentences, ts_ms=T0 + at, **fields
            )
        )

    def playback(self, turn_id: str, at: int) -> None:
        self.add(PlaybackStarted(call_id=self.call_id, turn_id=turn_id, ts_ms=T0 + at))

    def metrics(self, turn_id: str, at: int, **kw: Any) -> TurnMetrics:
        m = TurnMetrics(call_id=self.call_id, turn_id=turn_id, ts_ms=T0 + at, **kw)
        self.add(m)
        return m

    def ended(self, at: int, turns: int, reason: str = "hangup") -> None:
        self.add(CallEnded(call_id=self.call_id, reason=reason, duration_ms=at, turns=turns, ts_ms=T0 + at))


def normal_call() -> tuple[Script, TurnMetrics, TurnMetrics]:
    """Greeting, then two turns each fully played; the second one switches the prompt."""
    s = Script()
    s.started()
    s.greeting()
    s.user("t1", "Хочу записаться", speech_from=2000, speech_to=3000, asr_at=3250)
    s.sentence("t1", 0, "Конечно.", at=3600)
    s.sentence("t1", 1, "На какой день?", at=3700, last=True)
    s.done("t1", "Конечно. На какой день?", 2, at=3710)
    s.playback("t1", at=3900)
    m1 = s.metrics(
        "t1",
        at=6000,
        user_text="Хочу записаться",
        bot_text="Конечно. На какой день?",
        speech_end_ts_ms=T0 + 3000,
        asr_final_ts_ms=T0 + 3250,
        first_sentence_ts_ms=T0 + 3600,
        first_audio_ts_ms=T0 + 3800,
        first_played_ts_ms=T0 + 3900,
    )
    s.user("t2", "А сколько стоит?", speech_from=7000, speech_to=8000, asr_at=8300, provider="vosk")
    s.add(
        PromptSwitched(
            call_id=CALL,
            turn_id="t2",
            from_prompt="main",
            to_prompt="prices",
            matched="стоит",
            ts_ms=T0 + 8310,
        )
    )
    s.sentence("t2", 0, "Тысяча рублей.", at=8700, last=True)
    s.done("t2", "Тысяча рублей.", 1, at=8710, provider="anthropic", prompt_tokens=150, completion_tokens=5)
    s.playback("t2", at=9000)
    m2 = s.metrics(
        "t2",
        at=10500,
        user_text="А сколько стоит?",
        bot_text="Тысяча рублей.",
        speech_end_ts_ms=T0 + 8000,
        asr_final_ts_ms=T0 + 8300,
        first_sentence_ts_ms=T0 + 8700,
        first_audio_ts_ms=T0 + 8850,
        first_played_ts_ms=T0 + 9000,
    )
    s.ended(at=12000, turns=2)
    return s, m1, m2


def test_normal_call_with_greeting_and_two_turns() -> None:
    s, m1, m2 = normal_call()
    doc = build_transcript(s.events)

    assert doc["call_id"] == CALL
    assert doc["v"] == 1
    assert (doc["robot"], doc["channel"], doc["caller"], doc["mode"]) == (
        "pipeline_russian",
        "phone",
        "+79990001122",
        "pipeline",
    )
    assert doc["status"] == "ended"
    assert doc["started_at_ms"] == T0
    assert doc["started_at"] == iso_utc(T0) == "2025-11-21T04:40:00.000+00:00"
    assert doc["ended_at_ms"] == T0 + 12000
    assert doc["duration_sec"] == 12.0
    assert doc["end_reason"] == "hangup"
    assert doc["turns"] == 2

    segs = doc["segments"]
    assert [(g["turn_id"], g["role"]) for g in segs] == [
        (GREETING, "assistant"),
        ("t1", "user"),
        ("t1", "assistant"),
        ("t2", "user"),
        ("t2", "assistant"),
    ]
    greeting, u1, a1, u2, a2 = segs
    assert greeting["text"] == greeting["played_text"] == "Здравствуйте!"
    assert greeting["started_offset_ms"] == 300
    assert greeting["asr_latency_ms"] is None and greeting["voice_to_voice_ms"] is None

    assert u1["text"] == u1["played_text"] == "Хочу записаться"
    assert (u1["started_offset_ms"], u1["ended_offset_ms"]) == (2000, 3000)
    assert u1["asr_latency_ms"] == turn_figures(m1)["asr_latency_ms"] == 250
    assert u1["provider"] == "whisper"
    assert u1["interrupted"] is False

    assert a1["text"] == a1["played_text"] == "Конечно. На какой день?"
    assert a1["interrupted"] is False
    assert (a1["started_offset_ms"], a1["ended_offset_ms"]) == (3900, 6000)
    figures = turn_figures(m1)
    assert a1["asr_latency_ms"] == figures["asr_latency_ms"]
    assert a1["llm_latency_ms"] == figures["llm_latency_ms"] == 350
    assert a1["tts_latency_ms"] == figures["tts_latency_ms"] == 200
    assert a1["voice_to_voice_ms"] == figures["voice_to_voice_ms"] == 900
    assert a1["provider"] == "openai"

    assert u2["provider"] == "vosk"
    assert a2["voice_to_voice_ms"] == turn_figures(m2)["voice_to_voice_ms"] == 1000
    assert a2["provider"] == "anthropic"
    # before the first switch the prompt is the one it switched from; the switching turn has the new one
    assert [g["prompt"] for g in segs] == ["main", "main", "main", "prices", "prices"]


def test_pipeline_log_lists_every_event_in_stream_order_with_details() -> None:
    s, _, _ = normal_call()
    doc = build_transcript(s.events)
    log = doc["pipeline_log"]
    assert [e["seq"] for e in log] == [e.seq for e in s.events]
    assert [e["event_id"] for e in log] == [f"{CALL}:{e.seq}" for e in s.events]
    assert log[0]["type"] == "call.started" and log[0]["offset_ms"] == 0 and log[0]["turn_id"] is None
    asr = next(e for e in log if e["type"] == "asr.final")
    assert asr["turn_id"] == "t1"
    assert asr["offset_ms"] == 3250
    assert asr["detail"]["text"] == "Хочу записаться"
    sentence = next(e for e in log if e["type"] == "llm.sentence" and e["turn_id"] == "t1")
    assert sentence["detail"] == {"index": 0, "text": "Конечно.", "last": False}
    metrics = next(e for e in log if e["type"] == "turn.metrics")
    assert metrics["detail"]["voice_to_voice_ms"] == 900
    assert doc["events"] == len(s.events)
    assert doc["last_seq"] == s.events[-1].seq


def test_barge_in_keeps_full_text_and_what_was_played() -> None:
    s = Script()
    s.started()
    s.user("t1", "Расскажите о тарифах", speech_from=1000, speech_to=2000, asr_at=2200)
    s.sentence("t1", 0, "У нас три тарифа.", at=2500)
    s.playback("t1", at=2700)
    s.user("t2", "Стоп", speech_from=3500, speech_to=4000, asr_at=4200)
    s.add(
        ControlInterrupt(
            call_id=CALL,
            turn_id="t1",
            by_turn_id="t2",
            played_ms=900,
            played_text="У нас три тарифа.",
            ts_ms=T0 + 3600,
        )
    )
    s.metrics(
        "t1",
        at=3610,
        user_text="Расскажите о тарифах",
        bot_text="У нас три тарифа.",  # the gateway stopped taking sentences at the interruption
        speech_end_ts_ms=T0 + 2000,
        asr_final_ts_ms=T0 + 2200,
        first_sentence_ts_ms=T0 + 2500,
        first_audio_ts_ms=T0 + 2600,
        first_played_ts_ms=T0 + 2700,
        interrupted=True,
        played_text="У нас три тарифа.",
    )
    s.sentence("t1", 1, "Базовый стоит сто рублей.", at=3620)
    s.done("t1", "У нас три тарифа. Базовый стоит сто рублей.", 2, at=3630, interrupted=True)
    doc = build_transcript(s.events)

    bot = next(g for g in doc["segments"] if g["turn_id"] == "t1" and g["role"] == "assistant")
    assert bot["interrupted"] is True
    assert bot["text"] == "У нас три тарифа. Базовый стоит сто рублей."
    assert bot["played_text"] == "У нас три тарифа."
    assert (bot["started_offset_ms"], bot["ended_offset_ms"]) == (2700, 3600)
    assert bot["voice_to_voice_ms"] == 700
    assert doc["metadata"]["barge_ins"] == 1
    interrupt = next(e for e in doc["pipeline_log"] if e["type"] == "control.interrupt")
    assert interrupt["detail"] == {
        "by_turn_id": "t2",
        "played_ms": 900,
        "played_text": "У нас три тарифа.",
        "reason": "barge_in",
    }
    # the interrupting utterance follows the interrupted reply
    assert [(g["turn_id"], g["role"]) for g in doc["segments"]] == [
        ("t1", "user"),
        ("t1", "assistant"),
        ("t2", "user"),
    ]
    assert doc["status"] == "active"


def test_call_cut_off_without_turn_metrics_uses_asr_llm_and_interrupt() -> None:
    s = Script()
    s.started()
    s.user("t1", "Алло", speech_from=1000, speech_to=1500, asr_at=1700)
    # sentences arrive out of index order, and there is no llm.done: the text is put together by index
    s.sentence("t1", 1, "Чем помочь?", at=2050, last=True)
    s.sentence("t1", 0, "Слушаю.", at=2000)
    s.playback("t1", at=2300)
    s.add(ControlInterrupt(call_id=CALL, turn_id="t1", played_ms=500, played_text="Слушаю.", ts_ms=T0 + 2800))
    s.user("t2", "Повторите", speech_from=5000, speech_to=5600, asr_at=5900)
    s.done("t2", "Я сказал: слушаю.", 1, at=6300)
    doc = build_transcript(s.events)

    assert doc["status"] == "active"
    assert doc["ended_at_ms"] is None and doc["ended_at"] is None and doc["duration_sec"] is None
    assert doc["end_reason"] is None
    assert doc["turns"] == 0
    u1, a1, u2, a2 = doc["segments"]
    assert (u1["text"], u1["ended_offset_ms"]) == ("Алло", 1500)
    assert u1["asr_latency_ms"] is None  # only turn.metrics carries the measured figures
    assert a1["text"] == "Слушаю. Чем помочь?"
    assert a1["interrupted"] is True and a1["played_text"] == "Слушаю."
    assert (a1["started_offset_ms"], a1["ended_offset_ms"]) == (2300, 2800)
    assert a1["llm_latency_ms"] is None and a1["voice_to_voice_ms"] is None
    assert u2["text"] == "Повторите"
    assert a2["text"] == a2["played_text"] == "Я сказал: слушаю."
    assert a2["interrupted"] is False
    assert a2["started_offset_ms"] is None and a2["ended_offset_ms"] is None  # never played
    # the call's end interrupted t1 (no interrupting caller turn): not a barge-in
    assert doc["metadata"]["barge_ins"] == 0


def test_duplicated_and_shuffled_events_give_the_same_document() -> None:
    s, _, _ = normal_call()
    once = build_transcript(s.events)
    repeated = [*s.events, *s.events[3:9], s.events[0]]
    random.Random(7).shuffle(repeated)
    again = build_transcript(repeated)
    assert again == once
    assert len(again["pipeline_log"]) == len(s.events)
    assert len({e["seq"] for e in again["pipeline_log"]}) == len(s.events)


def test_turns_in_time_order_even_when_the_log_is_not() -> None:
    s = Script()
    s.started()
    # turn b's events reach the stream first but happened later
    s.user("b", "второй", speech_from=5000, speech_to=5500, asr_at=5700)
    s.user("a", "первый", speech_from=1000, speech_to=1500, asr_at=1700)
    doc = build_transcript(s.events)
    assert [g["text"] for g in doc["segments"]] == ["первый", "второй"]
    assert [e["turn_id"] for e in doc["pipeline_log"]][1:] == ["b", "b", "b", "a", "a", "a"]


def test_missing_call_started_estimates_the_start() -> None:
    s, _, _ = normal_call()
    events = [e for e in s.events if not isinstance(e.message, CallStarted)]
    doc = build_transcript(events)
    # call.ended says 12 s; that starts the call before any other event
    assert doc["started_at_ms"] == T0
    assert doc["robot"] == "pipeline_russian"  # from the sentences
    assert doc["channel"] is None and doc["caller"] is None
    assert doc["status"] == "ended"

    without_end = [e for e in events if not isinstance(e.message, CallEnded)]
    doc = build_transcript(without_end)
    assert doc["started_at_ms"] == T0 + 20  # the earliest event: the greeting sentence
    assert doc["segments"][0]["started_offset_ms"] == 280


def test_usage_providers_prompt_switches_and_errors() -> None:
    s, _, _ = normal_call()
    s.add(
        StageError(
            call_id=CALL,
            stage="tts",
            kind="timeout",
            detail="provider slow",
            turn_id="t2",
            retryable=True,
            ts_ms=T0 + 9100,
        )
    )
    doc = build_transcript(s.events)
    meta = doc["metadata"]
    assert meta["robot"] == "pipeline_russian"
    assert meta["providers"] == {"asr": ["whisper", "vosk"], "llm": ["openai", "anthropic"]}
    assert meta["usage"] == {
        "asr_audio_seconds": 2.0,  # two utterances of 1000 ms
        "llm_prompt_tokens": 250,
        "llm_completion_tokens": 25,
        "tts_characters": len("Здравствуйте!")
        + len("Конечно.")
        + len("На какой день?")
        + len("Тысяча рублей."),
        "by_provider": [],  # no provider.usage events: the TTS characters are the estimate above
    }
    assert meta["prompt_switches"] == [
        {
            "turn_id": "t2",
            "from": "main",
            "to": "prices",
            "matched": "стоит",
            "ts_ms": T0 + 8310,
            "offset_ms": 8310,
        }
    ]
    assert meta["errors"] == 1
    assert meta["stage_errors"] == [
        {
            "turn_id": "t2",
            "stage": "tts",
            "kind": "timeout",
            "detail": "provider slow",
            "retryable": True,
            "ts_ms": T0 + 9100,
            "offset_ms": 9100,
        }
    ]
    error = doc["pipeline_log"][-1]
    assert error["type"] == "stage.error"
    assert error["detail"] == {
        "stage": "tts",
        "kind": "timeout",
        "retryable": True,
        "detail": "provider slow",
    }


def test_failed_recognition_shows_an_empty_user_segment_and_noise_none() -> None:
    s = Script()
    s.started()
    s.user("noise", "", speech_from=1000, speech_to=1200, asr_at=1300)
    s.user("failed", "", speech_from=3000, speech_to=4000, asr_at=4100)
    s.add(
        StageError(
            call_id=CALL, stage="asr", kind="provider", detail="boom", turn_id="failed", ts_ms=T0 + 4100
        )
    )
    doc = build_transcript(s.events)
    assert [(g["turn_id"], g["role"], g["text"]) for g in doc["segments"]] == [("failed", "user", "")]


def test_result_is_plain_json_without_audio() -> None:
    s, _, _ = normal_call()
    s.add(
        TtsAudio(
            call_id=CALL,
            turn_id="t2",
            index=0,
            seq=0,
            sample_rate=8000,
            pcm=b"\x01\x02" * 80,
            ts_ms=T0 + 8850,
        )
    )
    doc = build_transcript(s.events)
    text = json.dumps(doc, ensure_ascii=False)
    assert json.loads(text) == doc  # only JSON types: nothing is lost or changed on the way
    tts = next(e for e in doc["pipeline_log"] if e["type"] == "tts.audio")
    assert tts["detail"] == {"index": 0, "chunk": 0, "last": False, "bytes": 160}


def test_odd_inputs_do_not_raise() -> None:
    empty = build_transcript([])
    assert empty["segments"] == [] and empty["pipeline_log"] == [] and empty["started_at_ms"] is None
    json.dumps(empty)

    # events of another call in the list are left out
    s, _, _ = normal_call()
    other = Script(call_id="other-call", first_seq=1000)
    other.started()
    other.user("x1", "чужой", speech_from=100, speech_to=200, asr_at=300)
    doc = build_transcript([*s.events, *other.events])
    assert doc["call_id"] == CALL
    assert all(g["turn_id"] != "x1" for g in doc["segments"])
    assert len(doc["pipeline_log"]) == len(s.events)

    # only a call.ended, and a turn.metrics with nothing measured
    lone = Script()
    lone.ended(at=5000, turns=3, reason="error")
    lone.metrics("t9", at=4000, user_text="эй")
    doc = build_transcript(lone.events)
    assert doc["started_at_ms"] == T0 and doc["duration_sec"] == 5.0 and doc["turns"] == 3
    assert [(g["role"], g["text"], g["asr_latency_ms"]) for g in doc["segments"]] == [("user", "эй", None)]


def test_continued_utterance_is_one_user_segment_and_unheard_replies_leave_no_robot_segment() -> None:
    s = Script()
    s.started()
    s.greeting()
    s.user("u1", "я хотел бы узнать", speech_from=1000, speech_to=2000, asr_at=2300)
    s.sentence("u1", 0, "Что именно?", at=2350, last=True)
    s.add(ControlInterrupt(call_id=CALL, turn_id="u1", by_turn_id="u2", reason="continued", ts_ms=T0 + 2800))
    s.user("u2", "я хотел бы узнать сколько стоит доставка", speech_from=2800, speech_to=4000, asr_at=4300)
    s.sentence("u2", 0, "Доставка бесплатная.", at=4350, last=True)
    s.playback("u2", at=4400)
    s.metrics(
        "u2", at=5000, user_text="я хотел бы узнать сколько стоит доставка", bot_text="Доставка бесплатная."
    )
    # "угу" over the robot's next reply: not part of the dialogue
    s.user("u3", "угу", speech_from=4600, speech_to=4900, asr_at=5100)
    s.add(ControlInterrupt(call_id=CALL, turn_id="u3", reason="backchannel", ts_ms=T0 + 5100))
    s.ended(at=6000, turns=1)
    doc = build_transcript(s.events)
    users = [seg for seg in doc["segments"] if seg["role"] == "user"]
    robots = [seg for seg in doc["segments"] if seg["role"] == "assistant" and seg["turn_id"] != GREETING]
    assert [u["turn_id"] for u in users] == ["u2", "u3"]
    assert users[0]["text"] == "я хотел бы узнать сколько стоит доставка"
    assert users[1].get("backchannel") is True and "backchannel" not in users[0]
    assert [r["turn_id"] for r in robots] == ["u2"]
